"""Probe protocol on real HDF5 stores of synthetic embeddings: planted signal, controls, splits."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from halp.config import Params, ProbeSettings
from halp.jsonfile import json_text
from halp.label.run import label_model
from halp.probe import metrics
from halp.probe.classifiers import StandardisedLinear
from halp.probe.headline import cell_layer, headline
from halp.probe.metrics import bootstrap_auroc
from halp.probe.risk_coverage import GRID, risk_coverage
from halp.probe.run import load_labelled, probe_grid, probe_model, transferred_cells
from halp.probe.splits import grouped_splits
from halp.probe.transfer import Cell, transfer
from halp.report.probes import breakdown, table_row, verdict, write_report
from halp.report.transfer import section
from halp.store.parts import IMAGE_ATTENTION, PartBuffer, PartFolder, write_part

LAYERS = [0, 1, 2]
PLANTED = 1  # query_token at this layer encodes the label linearly
N, H, D_VIS, PER_IMAGE, HEADS = 240, 16, 8, 3, 4


def make_store(
    root,
    labels: np.ndarray,
    seed: int = 0,
    categories: np.ndarray | None = None,
    planted_in: np.ndarray | None = None,
    attention_planted: int | None = None,
) -> Params:
    """A real part file (N samples, PER_IMAGE questions per image) plus labels and params pointing at them;
    the label is planted in the query token at layer PLANTED (only where `planted_in`, if given). With
    `attention_planted`, image attention is stored too, the label planted in the query token's share of
    attention on the image in head 0 at that layer (and not in its query token then)."""
    rng = np.random.default_rng(seed)
    buffer = PartBuffer()
    for i, label in enumerate(labels):
        query = rng.normal(size=(len(LAYERS), H)).astype(np.float32)
        attention = {}
        if attention_planted is not None:  # drawn only then: the other stores' numbers stay as they were
            attention = {
                n: rng.uniform(size=(len(LAYERS), HEADS)).astype(np.float32) for n in IMAGE_ATTENTION
            }
            attention["image_attention"][LAYERS.index(attention_planted), 0] += 2.0 * label
        elif planted_in is None or planted_in[i]:
            query[LAYERS.index(PLANTED), 0] += 3.0 * (2 * label - 1)
        buffer.add(
            {
                "sample_id": f"q{i}",
                "image_id": f"img{i // PER_IMAGE}",
                "image_sha256": "",
                "question": "?",
                "ground_truth": "yes",
                "source": "s",
                "category": "c" if categories is None else categories[i],
                "answer": "a",
                "gt_repaired": 0,
                "vision_token_pos": 1,
                "query_token_pos": 2,
                "seq_len": 3,
                "n_image_tokens": 1,
                "n_generated_tokens": 1,
            },
            {
                "vision_only": rng.normal(size=D_VIS).astype(np.float32),
                "vision_token": rng.normal(size=(len(LAYERS), H)).astype(np.float32),
                "query_token": query,
                "first_token_logprobs": np.sort(np.log(rng.dirichlet(np.ones(5))))[::-1].astype(np.float32),
                "first_token_ids": np.arange(5),
            }
            | attention,
        )
    folder = root / "embeddings" / "m"
    folder.mkdir(parents=True)
    parts = PartFolder(folder, "h")
    attrs = {"config_hash": "h", "layers": LAYERS, "num_layers": len(LAYERS)}
    write_part(parts.next_part(), buffer, attrs, "float32")
    parts.write_manifest("m", [m["sample_id"] for m in buffer.meta])  # the extraction finished
    (root / "labels").mkdir()
    pd.DataFrame(
        {"sample_id": [f"q{i}" for i in range(len(labels))], "hallucinated": labels.astype(bool)}
    ).to_csv(root / "labels" / "m.csv", index=False)
    return Params.model_validate(
        {
            "models": {"m": {"model": "unused"}},
            "extract": {"out_dir": str(root / "embeddings")},
            "label": {"out_dir": str(root / "labels")},
            "probe": {
                "seeds": 3,
                "bootstrap": 50,
                "out_dir": str(root / "probes"),
                "headline_dir": str(root / "headline"),
                "control_dir": str(root / "controls"),
                "test_scores_dir": str(root / "test_scores"),
            },
        }
    )


def balanced_labels(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.arange(N) % 3 == 0).astype(np.int64)


def auroc(report: dict, rep: str, layer, probe: str) -> float:
    return report["probes"][rep][str(layer)][probe]["auroc_mean"]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    params = make_store(root, balanced_labels())
    report = json.loads(probe_model(params, "m").read_text())
    return root, params, report


def test_planted_layer_is_found_and_the_others_are_chance(planted):
    _, _, report = planted
    assert report["status"] == "ok"
    for probe in ("mlp", "logistic"):
        assert auroc(report, "query_token", PLANTED, probe) >= 0.95
        for layer in (0, 2):
            assert abs(auroc(report, "query_token", layer, probe) - 0.5) < 0.15
            assert abs(auroc(report, "vision_token", layer, probe) - 0.5) < 0.15
        assert abs(auroc(report, "vision_only", "pooled", probe) - 0.5) < 0.15
    planted_ci = report["probes"]["query_token"][str(PLANTED)]["logistic"]
    assert planted_ci["auroc_ci_low"] <= planted_ci["auroc_mean"] <= planted_ci["auroc_ci_high"]
    assert set(report["baselines"]) == {"first_token_max_prob", "first_token_entropy", "metadata"}


def test_image_attention_cells_read_the_attention_and_appear_only_where_it_was_stored(planted, tmp_path):
    """Per layer (4 x heads features), all layers concatenated, and the query token beside them; a store
    without image attention has none of these cells."""
    assert not {"image_attention", "image_attention_all", "query_token+image_attention"} & set(
        planted[2]["probes"]
    )
    params = make_store(tmp_path, balanced_labels(), attention_planted=2)
    report = json.loads(probe_model(params, "m").read_text())
    assert report["status"] == "ok"
    for probe in ("mlp", "logistic"):
        assert auroc(report, "image_attention", 2, probe) >= 0.95
        for layer in (0, 1):
            assert abs(auroc(report, "image_attention", layer, probe) - 0.5) < 0.15
            assert auroc(report, "query_token+image_attention", layer, probe) >= 0.9  # all layers' attention
        assert abs(auroc(report, "query_token", 2, probe) - 0.5) < 0.15
        assert auroc(report, "image_attention_all", "pooled", probe) >= 0.9
    table = pd.read_csv(tmp_path / "probes" / "m.csv")
    assert len(table[table.representation == "image_attention_all"]) == 2  # one cell per probe, no layer
    assert table[table.representation == "image_attention_all"].layer.isna().all()


def test_low_rank_mlp_finds_the_planted_layer_and_workers_do_not_change_numbers(planted):
    _, params, report = planted
    params = params.model_copy(deep=True)
    params.probe.workers = 1
    assert json.loads(probe_model(params, "m").read_text()) == report  # the fixture ran one per core
    params.probe.mlp_rank = 4
    low_rank = json.loads(probe_model(params, "m").read_text())
    assert auroc(low_rank, "query_token", PLANTED, "mlp") >= 0.95
    assert abs(auroc(low_rank, "query_token", 0, "mlp") - 0.5) < 0.15


def test_the_headline_gives_each_representation_s_probe_chosen_on_validation_and_the_baselines(planted):
    _, params, _ = planted
    report = json.loads((params.probe.out_dir / "m.json").read_text())  # the last run's (tests rerun it)
    headline = json.loads((params.probe.headline_dir / "m.json").read_text())
    assert list(headline) == ["m"], "nested under the model, so that its columns name it"
    numbers = headline["m"]
    for rep, short in (("vision_only", "vf"), ("vision_token", "vt"), ("query_token", "qt")):
        cells = [(layer, m) for layer, probes in report["probes"][rep].items() for m in probes.values()]
        layer, chosen = max(cells, key=lambda cell: cell[1]["val_auroc_mean"])
        assert numbers[f"{short}_auroc"] == round(chosen["auroc_mean"], 4)
        assert numbers.get(f"{short}_layer") == (None if rep == "vision_only" else int(layer))
    assert numbers["qt_layer"] == PLANTED
    outputs = [report["baselines"][b] for b in ("first_token_max_prob", "first_token_entropy")]
    assert numbers["output_auroc"] == round(max(outputs, key=lambda m: m["val_auroc_mean"])["auroc_mean"], 4)
    assert numbers["metadata_auroc"] == round(report["baselines"]["metadata"]["auroc_mean"], 4)
    assert numbers["samples"] == N and numbers["hallucination_rate"] == round(report["n_hallucinated"] / N, 4)


def test_standardised_linear_equals_a_linear_layer_on_standardised_features():
    rng = np.random.default_rng(0)
    scale = np.r_[np.full(8, 1e-3), np.ones(8)]  # tiny features, and massive activations (mean 1,000)
    x = torch.from_numpy(rng.normal(size=(64, 16)) * scale + np.r_[np.zeros(8), np.full(8, 1e3)]).float()
    mean, std = x.mean(dim=0), x.std(dim=0, unbiased=False)
    layer = StandardisedLinear(mean, std, 4)
    expected = torch.nn.functional.linear((x - mean) / std, layer.weight, layer.bias)
    torch.testing.assert_close(layer(x), expected, atol=1e-3, rtol=1e-3)


def test_shuffled_control_sits_near_chance(planted):
    _, params, _ = planted
    path = probe_model(params, "m", control="shuffled")
    assert path == params.probe.control_dir / "m_shuffled.json"
    assert sorted(p.name for p in params.probe.out_dir.iterdir()) == ["m.csv", "m.json"], "metrics untouched"
    assert [p.name for p in params.probe.headline_dir.iterdir()] == ["m.json"]
    report = json.loads(path.read_text())
    assert report["control"] == "shuffled"
    # validation labels are shuffled too: true ones there picked the epoch and leaked the signal (0.67)
    for probe in ("mlp", "logistic"):
        assert abs(auroc(report, "query_token", PLANTED, probe) - 0.5) < 0.12, probe


def test_same_seed_same_numbers(planted):
    _root, params, report = planted
    again = json.loads(probe_model(params, "m").read_text())
    assert again == report


def test_degenerate_labels_give_a_message_not_a_crash(tmp_path):
    labels = np.zeros(N, dtype=np.int64)
    labels[:2] = 1
    params = make_store(tmp_path, labels)
    report = json.loads(probe_model(params, "m").read_text())
    assert report["status"] == "degenerate"
    assert "2 hallucinated and 238 correct answers" in report["message"]
    headline = json.loads((params.probe.headline_dir / "m.json").read_text())
    assert headline == {"m": {"samples": N, "hallucination_rate": round(2 / N, 4)}}
    write_report(["m", "new"], [], params.probe.out_dir, tmp_path / "summary", tmp_path / "reports")
    text = (tmp_path / "reports" / "report.md").read_text()
    assert "| m | 240 | 2 hallucinated" in text
    assert "| new | | not probed: run `halp probe --model new` |" in text
    assert not (tmp_path / "reports" / "figures" / "m.png").exists()


def test_a_hand_edited_labels_file_is_read_by_value_and_a_bad_one_refused_by_line(tmp_path):
    labels = balanced_labels()
    params = make_store(tmp_path, labels)
    path = params.label.out_dir / "m.csv"
    table = pd.read_csv(path, dtype=str)
    table.loc[0, "hallucinated"] = "no"  # a person's edit: a word, read as the verdict it names
    table.loc[1, "hallucinated"] = "1"
    table.to_csv(path, index=False)
    _, y, _ = load_labelled(params, "m")
    assert y[0] == 0 and y[1] == 1 and (y[2:] == labels[2:]).all()
    for cell, message in (("unsure", r"line 4 \('unsure'\)"), ("", r"an empty cell.*line 4 \(''\)")):
        table.loc[2, "hallucinated"] = cell
        table.to_csv(path, index=False)
        with pytest.raises(ValueError, match=message):
            load_labelled(params, "m")
    table.loc[2, "hallucinated"] = "False"
    pd.concat([table, table.head(3)]).to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"3 sample_id\(s\) appear more than once: line 2 \(q0\)"):
        load_labelled(params, "m")


def test_an_unfinished_extraction_is_refused_unless_asked_and_then_read_with_a_warning(tmp_path, caplog):
    params = make_store(tmp_path, balanced_labels())
    (params.extract.out_dir / "m" / "manifest.json").unlink()  # a run still going, or killed
    with pytest.raises(ValueError, match=r"no manifest.json: its extraction has not finished.*240 samples"):
        probe_model(params, "m")
    with pytest.raises(ValueError, match=r"halp extract --model m.*--allow-incomplete"):
        label_model(params, "m")
    assert not params.probe.out_dir.exists(), "nothing was written"
    _, y, _ = load_labelled(params, "m", allow_incomplete=True)
    assert len(y) == N and "reading it anyway" in caplog.text


def test_a_truncated_probe_file_is_named_with_the_command_that_rewrites_it(planted, tmp_path):
    _, params, _ = planted
    probes = tmp_path / "probes"
    probes.mkdir()
    (probes / "m.json").write_text((params.probe.out_dir / "m.json").read_text()[:100])
    with pytest.raises(ValueError, match=r"m.json is not valid JSON .*`halp probe --model m` again"):
        write_report(["m"], [], probes, tmp_path / "summary", tmp_path / "report")


def test_grouped_splits_never_share_an_image_and_test_every_sample_once():
    labels = balanced_labels()
    groups = np.arange(N) // PER_IMAGE
    splits = grouped_splits(labels, groups, 7)
    for train, val, test in splits:
        assert sorted(np.concatenate([train, val, test])) == list(range(N))
        images = [set(groups[rows]) for rows in (train, val, test)]
        assert not (images[0] & images[1] or images[0] & images[2] or images[1] & images[2])
    assert sorted(np.concatenate([test for _, _, test in splits[:5]])) == list(range(N))
    assert not np.array_equal(splits[5][2], splits[0][2])  # the sixth reshuffles the folds


def test_bootstrap_matches_sklearn_on_every_resample():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 100)
    s = np.round(rng.normal(size=100) + y, 1)  # ties on purpose
    rows = np.random.default_rng(7).integers(0, 100, size=(20, 100))
    expected = [roc_auc_score(y[r], s[r]) for r in rows]
    np.testing.assert_allclose(bootstrap_auroc(y, s, 20, seed=7), expected, atol=1e-12)
    assert metrics.auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_report_table_and_figures(planted, tmp_path):
    _root, params, _ = planted
    out = write_report(["m"], [], params.probe.out_dir, tmp_path / "summary", tmp_path)
    text = out.read_text()
    assert "| m | 240 (33%) |" in text and f"(L{PLANTED}, " in text
    assert "beats the best output baseline and the metadata baseline (intervals do not overlap)" in text
    assert "| 0.500 [0.50, 0.50] |" in text, "the metadata baseline's column"
    assert (tmp_path / "figures" / "m.png").stat().st_size > 1000
    data = pd.read_csv(tmp_path / "plots" / "m.csv")
    assert list(data.layer) == LAYERS and "query_token_mlp" in data and "query_token_mlp_ci_low" in data
    assert "## Abstaining before the answer" in text and f"| guard: query_token L{PLANTED} " in text
    assert f"At 80% coverage the guard: query_token L{PLANTED} mlp leaves" in text
    curves = pd.read_csv(tmp_path / "risk_coverage" / "m.csv").set_index("coverage")
    assert {"guard", "first_token_entropy", "metadata"} <= set(curves.columns)
    assert curves.guard[0.5] < curves.first_token_entropy[0.5] / 2, "the planted layer ranks far better"
    assert (tmp_path / "figures" / "m_risk_coverage.png").stat().st_size > 1000


def test_random_weight_models_go_to_the_plumbing_section_and_trained_ones_to_the_depth_figure(
    planted, tmp_path
):
    _root, params, _ = planted
    probes = params.probe.out_dir
    summaries = tmp_path / "summary"
    summaries.mkdir()
    summary = {
        "n_samples": N,
        "n_errors": 2,
        "positions": {"query_token_last": N, "vision_token_before_query": N - 1},
    }
    (summaries / "random.json").write_text(json.dumps(summary))
    (probes / "random.json").write_text(
        json.dumps({"status": "degenerate", "n_samples": N, "n_hallucinated": N})
    )
    text = write_report(
        ["m", "random", "unextracted"], ["random", "unextracted"], probes, summaries, tmp_path
    )
    main, plumbing = text.read_text().split("## Plumbing: models with random weights")
    assert "| m | 240 (33%) |" in main and "| random |" not in main
    assert f"| random | {N} | 2 | {N - 1} of {N} | {N} of {N} |" in plumbing
    assert "| unextracted | not extracted: run `dvc repro extract@unextracted` |" in plumbing
    depth = pd.read_csv(tmp_path / "auroc_by_depth.csv")
    layered = depth[depth.representation == "query_token"].sort_values("layer")
    assert list(layered.relative_depth) == [0.0, 0.5, 1.0] and set(depth.model) == {"m"}
    assert layered.set_index("layer").auroc_mean[PLANTED] > 0.9, "the planted layer, at its depth"
    assert (tmp_path / "figures" / "auroc_by_depth.png").stat().st_size > 1000


def test_out_of_fold_scores_test_every_sample_once_and_keep_their_fold(planted):
    _, params, _ = planted
    scores = pd.read_csv(params.probe.test_scores_dir / "m.csv")
    assert list(scores.sample_id) == [f"q{i}" for i in range(N)]
    tested = scores.fold >= 0  # the fixture's 3 seeds test 3 of the 5 folds
    assert (
        set(scores.fold[tested]) == {0, 1, 2}
        and scores.loc[~tested, f"query_token/{PLANTED}/mlp"].isna().all()
    )
    assert scores.loc[tested].drop(columns="sample_id").notna().all().all()


def test_risk_coverage_against_counting_by_hand():
    y = np.array([1, 0, 1, 0, 0, 1, 0, 0, 0, 1])
    table = pd.DataFrame({"fold": 0, "hallucinated": y, "perfect": y + 0.0, "constant": 0.0, "worst": -y})
    perfect = risk_coverage(table, "perfect", bootstrap=0)
    assert perfect["rate_at_80"] == pytest.approx(2 / 8) and perfect["curve"][GRID.tolist().index(0.6)] == 0
    assert risk_coverage(table, "worst", bootstrap=0)["rate_at_80"] == pytest.approx(4 / 8)
    constant = risk_coverage(table, "constant", bootstrap=0)  # ties are answered at the overall rate
    np.testing.assert_allclose(constant["curve"], y.mean()) and constant["aurc"] == pytest.approx(y.mean())
    by_hand = np.mean([y[np.argsort(y, kind="stable")][:k].mean() for k in range(1, 11)])
    assert perfect["aurc"] == pytest.approx(by_hand)


def test_a_baseline_that_ranks_backwards_is_flipped_on_validation(planted):
    _, params, _ = planted
    y = balanced_labels()
    groups = np.arange(N) // PER_IMAGE
    backwards = -y + np.random.default_rng(0).normal(0, 0.3, N)
    scored = probe_grid([], {"backwards": backwards}, y, groups, params.probe).baselines
    assert scored["backwards"]["flipped_seeds"] == params.probe.seeds
    assert scored["backwards"]["auroc_mean"] > 0.9


def test_the_metadata_baseline_knows_only_the_category(tmp_path, planted):
    _, _, report = planted
    assert report["baselines"]["metadata"]["auroc_mean"] == 0.5, "one category: no information"
    labels = balanced_labels()
    rng = np.random.default_rng(1)  # a category with 80% hallucinations, one with 10%
    categories = np.where(
        labels == 1,
        rng.choice(["hard", "easy"], N, p=[0.9, 0.1]),
        rng.choice(["hard", "easy"], N, p=[0.1, 0.9]),
    )
    informed = json.loads(probe_model(make_store(tmp_path, labels, categories=categories), "m").read_text())
    assert informed["baselines"]["metadata"]["auroc_mean"] > 0.8


def half_seen(tmp_path, labels: np.ndarray, categories: np.ndarray) -> Params:
    """A store whose label is readable in the first half's states only, that half the breakdown's group
    "seen" (column "mechanism"), the other "unseen"."""
    signal = np.arange(N) < N // 2
    params = make_store(tmp_path, labels, planted_in=signal, categories=categories)
    params.probe.breakdown = tmp_path / "groups.csv"
    pd.DataFrame(
        {"question_id": [f"q{i}" for i in range(N)], "mechanism": np.where(signal, "seen", "unseen")}
    ).to_csv(params.probe.breakdown, index=False)
    return params


def test_auroc_within_each_group_of_the_breakdown(tmp_path):
    labels = balanced_labels()
    signal = np.arange(N) < N // 2
    categories = np.where(np.arange(N) % 2 == 0, "even", "odd")
    params = half_seen(tmp_path, labels, categories)
    groups = params.probe.breakdown
    report = json.loads(probe_model(params, "m").read_text())
    planted = report["probes"]["query_token"][str(PLANTED)]["logistic"]
    assert planted["auroc_in_seen"] > 0.8  # trained on both halves, so below the planted-everywhere 0.95
    assert abs(planted["auroc_in_unseen"] - 0.5) < 0.2
    by_category = {c: labels[signal & (categories == c)].mean() for c in ("even", "odd")}
    expected = {"n_samples": N // 2, "hallucination_rate": labels[signal].mean(), "by_category": by_category}
    assert report["groups"]["seen"] == expected
    report_dir = tmp_path / "report"
    text = write_report(["m"], [], params.probe.out_dir, tmp_path / "summary", report_dir).read_text()
    assert "| | seen | unseen |" in text and f"| query_token L{PLANTED} (" in text
    unseen = labels[~signal & (categories == "odd")].mean()
    assert f"| hallucinated: odd | {by_category['odd']:.0%} | {unseen:.0%} |" in text
    groups.write_text("question_id\nq1\n")
    with pytest.raises(ValueError, match="two columns"):
        probe_model(params, "m")


def metrics_of(val: float, test: float) -> dict:
    """A grid cell's or a baseline's metrics from its validation and test AUROC."""
    return {
        "val_auroc_mean": val,
        "auroc_mean": test,
        "auroc_ci_low": test - 0.01,
        "auroc_ci_high": test + 0.01,
        "auroc_in_faint": test - 0.1,
    }


def test_every_headline_table_and_breakdown_chooses_on_validation_never_on_test():
    """A grid whose test AUROCs rank every cell backwards from validation: each reported cell must be
    validation's choice, shown with its own test AUROC."""
    layered = [(rep, layer) for rep in ("vision_token", "query_token", "image_attention") for layer in (0, 1)]
    cells = [("vision_only", None), *layered, ("image_attention_all", None)]
    cells += [("query_token+image_attention", layer) for layer in (0, 1)]
    rows = pd.DataFrame(
        [
            {"representation": rep, "layer": layer, "probe": probe}
            | metrics_of(val := 0.6 + 0.01 * (2 * i + j), 1.4 - val)
            for i, (rep, layer) in enumerate(cells)
            for j, probe in enumerate(("mlp", "logistic"))
        ]
    )  # validation chooses the logistic probe of the last layer of each representation
    report = {
        "model": "m",
        "status": "ok",
        "n_samples": 100,
        "n_hallucinated": 30,
        "baselines": {
            "first_token_max_prob": metrics_of(0.55, 0.70),
            "first_token_entropy": metrics_of(0.65, 0.60),  # validation's choice
            "metadata": metrics_of(0.5, 0.5),
        },
        "groups": {"faint": {"n_samples": 10, "hallucination_rate": 0.5}},
    }
    numbers = headline(report, rows)["m"]
    assert numbers["vf_auroc"] == round(1.4 - 0.61, 4)
    assert (numbers["vt_layer"], numbers["vt_auroc"]) == (1, round(1.4 - 0.65, 4))
    assert (numbers["qt_layer"], numbers["qt_auroc"]) == (1, round(1.4 - 0.69, 4))
    assert numbers["output_auroc"] == 0.6
    row = table_row("m", report, rows)
    assert "| 0.790 [0.78, 0.80] (logistic) |" in row, "vision-only"
    assert numbers["ia_auroc"] == round(1.4 - 0.75, 4), "all layers', validation's choice among attention"
    assert "ia_layer" not in numbers and not any(key.startswith("qt_ia") for key in numbers)
    assert (
        "| 0.710 [0.70, 0.72] (L1, logistic) | 0.650 [0.64, 0.66] (all layers, logistic) "
        "| 0.610 [0.60, 0.62] (L1, logistic) | 0.600 [0.59, 0.61] (first_token_entropy) |"
    ) in row, "query-token, image attention (per layer or all layers), QT + image attention"
    assert "0.610 [0.60, 0.62] (query_token+image_attention L1, logistic)" in verdict("m", report, rows)
    table = "\n".join(breakdown("m", report, rows))
    assert "| query_token L1 (logistic) | 0.610 |" in table and "| first_token_entropy | 0.500 |" in table
    assert "| image attention, all layers (logistic) | 0.550 |" in table

    # A group holding one class has no AUROC: written to the JSON as null, it reads as n/a
    report["baselines"]["first_token_entropy"]["auroc_in_faint"] = float("nan")
    report = json.loads(json_text(report))
    assert report["baselines"]["first_token_entropy"]["auroc_in_faint"] is None
    assert "| first_token_entropy | n/a |" in "\n".join(breakdown("m", report, rows))


def test_transfer_trains_on_one_group_and_tests_on_the_others(tmp_path):
    labels = balanced_labels()
    categories = np.where(np.arange(N) % 2 == 0, "even", "odd")
    categories[(labels == 0) & (np.arange(N) % 7 == 0)] = "easy"  # a kind of question never got wrong
    params = half_seen(tmp_path, labels, categories)
    transfer = json.loads(probe_model(params, "m").read_text())["transfer"]
    assert transfer["dataset"] == {"skipped_because": "one group only (s)", "skipped": {}}
    easy = int((categories == "easy").sum())
    assert transfer["category"]["skipped"] == {
        "easy": f"0 of {easy} samples hallucinated: fewer than 5 of each class"
    }
    assert list(transfer["category"]["groups"]) == ["even", "odd"]
    by_mechanism = transfer["mechanism"]["cells"]["query_token"]
    assert (by_mechanism["layer"], set(transfer["mechanism"]["cells"])) == (
        PLANTED,
        {"vision_only", "vision_token", "query_token"},
    )
    seen = by_mechanism["trained_on"]["seen"]
    assert seen["seen"]["auroc_mean"] > 0.8 and seen["seen"]["n_seeds"] == params.probe.transfer_seeds
    assert seen["seen"]["auroc_ci_low"] < seen["seen"]["auroc_mean"] < seen["seen"]["auroc_ci_high"]
    assert abs(seen["unseen"]["auroc_mean"] - 0.5) < 0.2, "what the seen half learned is not in the other"
    left_out = by_mechanism["left_out"]["seen"]
    assert abs(left_out["out_of_group"]["auroc_mean"] - 0.5) < 0.2, "trained on the unseen half only"
    assert left_out["in_distribution"]["auroc_mean"] > 0.8, "HALP's protocol: trained on both halves"
    across = transfer["category"]["cells"]["query_token"]["trained_on"]["even"]["odd"]
    assert across["auroc_mean"] > 0.7, "even and odd questions share the planted signal"
    report_dir = tmp_path / "report"
    text = write_report(["m"], [], params.probe.out_dir, tmp_path / "summary", report_dir).read_text()
    unseen = text.split("## Questions unlike the training set")[1]
    assert "**m** across dataset: not measured, one group only (s)." in unseen
    assert "across category (rows: trained on; columns: tested on). easy left out: 0 of" in unseen
    for grouping in ("category", "mechanism"):
        assert (report_dir / "figures" / f"m_transfer_{grouping}.png").stat().st_size > 1000
    inside, outside = left_out["in_distribution"], left_out["out_of_group"]
    row = f"| mechanism | seen | QT L{PLANTED} {by_mechanism['probe']} | {inside['auroc_mean']:.3f} ["
    assert row in unseen and f"] | {outside['auroc_mean']:.3f} [" in unseen
    assert "m: a kind of question (mechanism) never seen in training moves the probes' AUROC" in unseen
    plotted = pd.read_csv(report_dir / "transfer" / "m.csv")
    assert len(plotted) == 3 * (2 + 2) and plotted.out_of_group_mean.between(0, 1).all()
    params.probe.transfer = False  # the grid alone, for a quicker stage
    assert "transfer" not in json.loads(probe_model(params, "m").read_text())


def test_transfer_also_trains_the_cell_a_guard_saves_wherever_it_is():
    """A default guard saves the grid's best cell on validation; its card quotes that cell's left-out
    numbers, so the transfer runs train it even when it is not one of HALP's three representations."""
    table = pd.DataFrame(
        [
            ("vision_only", None, "mlp", 0.55),
            ("vision_token", 1, "logistic", 0.60),
            ("query_token", 2, "mlp", 0.80),
            ("query_token", 3, "mlp", 0.78),
            ("image_attention", 2, "mlp", 0.79),
            ("query_token+image_attention", 3, "logistic", 0.81),
        ],
        columns=["representation", "layer", "probe", "val_auroc_mean"],
    )
    cells = [(row.representation, cell_layer(row), row.probe) for row in transferred_cells(table)]
    assert cells == [
        ("vision_only", None, "mlp"),
        ("vision_token", 1, "logistic"),
        ("query_token", 2, "mlp"),
        ("query_token+image_attention", 3, "logistic"),
    ]
    table.loc[5, "val_auroc_mean"] = 0.70  # the query token alone is best: nothing is trained twice
    assert [row.representation for row in transferred_cells(table)] == [
        "vision_only",
        "vision_token",
        "query_token",
    ]


def test_a_guard_s_extra_cell_gets_only_the_left_out_fits_and_the_same_numbers(tmp_path):
    """The guard's card quotes only leave-one-group-out numbers, so its cell skips the trained-on matrix;
    the fits it keeps are the ones a full cell makes (same rows, same seed), so its numbers are equal,
    and the report draws no empty heatmap panel for it."""
    rng = np.random.default_rng(0)
    y = balanced_labels()
    x = rng.normal(size=(N, H)).astype(np.float32)
    x[:, 0] += 2.0 * y
    images = np.arange(N) // PER_IMAGE
    splits = grouped_splits(y, images, 3)
    scores = [(np.zeros(len(val)), rng.random(len(test))) for _, val, test in splits]
    row = pd.Series({"representation": "query_token", "layer": 1, "probe": "logistic"})
    guard = row.copy()
    guard["representation"] = "query_token+image_attention"
    mechanism = np.array(["a", "b", "c"])[np.arange(N) % 3]
    settings = ProbeSettings(seeds=3, transfer_seeds=2, bootstrap=20, workers=1)
    found = transfer(
        [Cell(row, x, scores), Cell(guard, x, scores, matrix=False)],
        y,
        splits,
        {"mechanism": mechanism},
        settings,
    )["mechanism"]["cells"]
    full, left_out_only = found["query_token"], found["query_token+image_attention"]
    assert "trained_on" in full and "trained_on" not in left_out_only
    assert left_out_only["left_out"] == full["left_out"]
    assert left_out_only["left_out"]["a"]["out_of_group"]["n_seeds"] == 2, "transfer_seeds of the 3 splits"
    lines = section(
        "m",
        {"mechanism": {"groups": {g: {} for g in "abc"}, "skipped": {}, "cells": found}},
        tmp_path,
        tmp_path / "m.csv",
    )
    assert (tmp_path / "m_transfer_mechanism.png").stat().st_size > 1000
    assert sum("| QT+IA L1 logistic |" in line for line in lines) == 3, "its left-out rows in the table"


@pytest.mark.slow
def test_ctrl_c_during_probe_says_that_nothing_is_kept(tmp_path):
    """Only the commands that write part by part promise to keep finished work."""
    params = make_store(tmp_path, balanced_labels())
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params.model_dump(mode="json", exclude_none=True)))
    command = [sys.executable, "-m", "halp", "--params", str(params_file), "probe", "--model", "m"]
    proc = subprocess.Popen(command, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    first = proc.stderr.readline()  # the first probe fitted: well inside the run
    proc.send_signal(signal.SIGINT)
    err = first + proc.communicate(timeout=120)[1]
    if proc.returncode == 0:
        pytest.skip("the run finished before the interrupt arrived")
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert "halp probe: interrupted. An unfinished run of this command keeps nothing" in err
    assert "Finished work is kept" not in err and not (tmp_path / "probes" / "m.json").exists()
