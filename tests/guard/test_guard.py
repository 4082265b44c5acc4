"""A guard as a user fits and applies it: the demo VLM (real weights, trained here) on a small demo world,
extracted, labelled and probed by the real `halp` commands, then the saved probe used before the answer."""

from __future__ import annotations

import json
import shutil
from contextlib import chdir
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from halp.config import ConfigError, load_params
from halp.guard.guard import Guard, GuardMismatch
from halp.probe.metrics import auroc
from halp.probe.run import cell_features, load_labelled
from halp.probe.splits import grouped_splits
from halp.store import open_embeddings
from halp.store.lock import writing
from tests.conftest import REPO, file_limit, halp, make_workspace, set_params
from tests.test_jsonfile import strict


def fit_demo_guard(
    folder: Path, tiny_dir: Path, image_attention: bool = False, guard: dict | None = None
) -> Path:
    """The demo VLM on a small demo world through the real commands, up to its fitted guard."""
    make_workspace(folder, tiny_dir, sample_size=400)
    set_params(folder, {"demo.n_images": 120})
    params = yaml.safe_load((folder / "params.yaml").read_text())
    params["models"] = {
        "demo_vlm": {"model": str(REPO / "models/organisms/demo_vlm"), "layers": [0, 2, 3], "batch_size": 32,
                     "checkpoint_interval": 200, "max_new_tokens": 10, "image_attention": image_attention},
    }  # fmt: skip
    params["probe"] = {"seeds": 2, "bootstrap": 50, "workers": 1}
    params["guard"] = {"models": ["demo_vlm"]} | (guard or {})
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    for command in ("prepare-data", "sample"):
        halp(command, cwd=folder)
    for command in ("extract", "label", "probe", "guard-fit"):
        halp(command, "--model", "demo_vlm", cwd=folder)
    return folder


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, tiny_dir) -> Path:
    return fit_demo_guard(tmp_path_factory.mktemp("guard"), tiny_dir)


@pytest.fixture(scope="module")
def guard(fitted) -> Guard:
    return Guard.load(fitted / "models/guards/demo_vlm")


def stored(folder: Path, n: int):
    """The first n extracted samples: their images, questions and stored representations."""
    emb = open_embeddings(folder / "embeddings/demo_vlm")
    paths = pd.read_csv(folder / "sampled/samples.csv", dtype=str).set_index("question_id").image_path
    meta = emb.meta.head(n)
    images = [Image.open(folder / paths[sample_id]).convert("RGB") for sample_id in meta.sample_id]
    return emb, images, list(meta.question)


def test_the_card_says_what_the_guard_is_and_how_far_to_trust_it(fitted):
    card = strict((fitted / "models/guards/demo_vlm/guard.json").read_text())  # no bare NaN
    report = strict((fitted / "metrics/probes/demo_vlm.json").read_text())
    cells = [
        (rep, layer, probe, metrics["val_auroc_mean"])
        for rep, layers in report["probes"].items()
        for layer, probes in layers.items()
        for probe, metrics in probes.items()
    ]
    rep, layer, probe, _ = max(cells, key=lambda cell: cell[3])
    assert (card["representation"], str(card["layer"] if card["layer"] is not None else "pooled")) == (
        rep,
        layer,
    )
    assert card["probe"] == probe and card["chosen_by"] == "validation AUROC of the probe grid"
    assert card["n_train"] + card["n_calibration"] + card["n_holdout"] == card["n_samples"]
    assert card["fingerprint"].startswith("sha256:") and card["n_blocks"] == 4
    assert list(card["thresholds"]) == ["0.9", "0.8", "0.7"]
    assert card["thresholds"]["0.7"] <= card["thresholds"]["0.8"] <= card["thresholds"]["0.9"]
    low, high = card["holdout"]["auroc_ci_low"], card["holdout"]["auroc_ci_high"]
    assert low <= card["holdout"]["auroc"] <= high
    assert {"halp", "torch", "transformers"} <= set(card["versions"])
    unseen = card["unseen_kinds_of_question"]  # from the probe stage's transfer results for this cell
    assert list(unseen["dataset"]) == ["not_measured"], "the small demo's other dataset has too few"
    measured = report["transfer"]["category"]["cells"][rep]
    assert (measured["layer"], measured["probe"]) == (card["layer"], probe)
    expected = {g: {p: m["auroc_mean"] for p, m in t.items()} for g, t in measured["left_out"].items()}
    assert unseen["category"] == expected | {"skipped": report["transfer"]["category"]["skipped"]}
    assert set(expected) == {"attribute", "existence"}, "false premises are never wrong in the demo world"
    assert not list((fitted / "models/guards/demo_vlm").glob("*.pt*")), "no pickle anywhere"


def test_live_risk_equals_the_saved_probe_on_the_stored_states(fitted, guard):
    emb, images, questions = stored(fitted, 12)
    card = guard.card
    features = emb.get(card["representation"], card["layer"])[:12]
    expected = guard.risk(features)
    live = guard.assess(images, questions, answer=False)
    np.testing.assert_allclose([a.risk for a in live], expected, atol=1e-5, rtol=0)
    assert [a.answer for a in live] == [None] * 12


def test_a_guard_on_image_attention_reads_live_what_it_was_fitted_on(tmp_path, tiny_dir):
    """The query token beside every layer's image attention: the card names the layers, and the risk
    before the answer equals the saved probe on the stored features, batched and one at a time."""
    guard_settings = {"representation": "query_token+image_attention", "layer": 2}
    folder = fit_demo_guard(tmp_path, tiny_dir, image_attention=True, guard=guard_settings)
    guard = Guard.load(folder / "models/guards/demo_vlm")
    assert (guard.card["representation"], guard.card["layer"]) == ("query_token+image_attention", 2)
    assert guard.card["attention_layers"] == [0, 2, 3] and guard.card["width"] == 128 + 3 * 4 * 4
    emb, images, questions = stored(folder, 8)
    expected = guard.risk(cell_features(emb, "query_token+image_attention", 2)[:8])
    live = guard.assess(images, questions, answer=False)
    np.testing.assert_allclose([a.risk for a in live], expected, atol=1e-5, rtol=0)
    alone = guard.assess(images[:1], questions[:1], answer=False)[0]
    assert alone.risk == pytest.approx(live[0].risk, abs=1e-5)


def test_batched_equals_one_at_a_time_and_answers_are_the_extractions(fitted, guard):
    emb, images, questions = stored(fitted, 6)
    batched = guard.assess(images, questions)
    alone = [guard.assess([image], [question])[0] for image, question in zip(images, questions, strict=True)]
    np.testing.assert_allclose([a.risk for a in batched], [a.risk for a in alone], atol=1e-5, rtol=0)
    assert [a.answer for a in batched] == [a.answer for a in alone] == list(emb.meta.answer.head(6))
    assert [a.flagged for a in batched] == [a.risk > guard.threshold for a in batched]


def test_abstention_stops_flagged_questions_at_the_prefill(fitted):
    _, images, questions = stored(fitted, 8)
    guard = Guard.load(fitted / "models/guards/demo_vlm", coverage=0.7)
    assessed = guard.assess(images, questions, abstain=True)
    assert any(a.flagged for a in assessed) or pytest.skip("no question above the 0.7 threshold here")
    for a in assessed:
        assert (a.answer is None) == a.flagged


def test_a_reloaded_guard_gives_the_fitted_risks(fitted, guard):
    """The thresholds and the holdout AUROC were computed from the fitted probe's risks on its calibration
    and holdout rows: the probe reloaded from safetensors must give them again."""
    params = load_params(fitted / "params.yaml")
    with chdir(fitted):  # the workspace's paths are relative to it
        emb, y, groups = load_labelled(params, "demo_vlm")
        features = emb.get(guard.card["representation"], guard.card["layer"])
    _, calibration, holdout = grouped_splits(y, groups, 1)[0]
    card = guard.card
    risk = guard.risk(features)
    for coverage, threshold in card["thresholds"].items():
        assert np.quantile(risk[calibration], float(coverage)) == pytest.approx(threshold, abs=1e-6)
    assert auroc(y[holdout], risk[holdout]) == pytest.approx(card["holdout"]["auroc"], abs=1e-9)


def test_a_guard_on_other_weights_is_refused_naming_both(fitted, tiny_dir, tmp_path, load_tiny):
    folder = fitted / "models/guards/demo_vlm"
    with pytest.raises(GuardMismatch, match=r"fitted on .*demo_vlm \(sha256:.*not on .*qwen2_vl \(sha256:"):
        Guard.load(folder, model=str(tiny_dir / "qwen2_vl"))
    with pytest.raises(GuardMismatch, match=r"\(128 hidden_size\); this model has 64"):
        Guard.load(folder, loaded=load_tiny("qwen2_vl"))
    copy = shutil.copytree(REPO / "models/organisms/demo_vlm", tmp_path / "copy")
    assert Guard.load(folder, model=str(copy), loaded=None).card["source"] == str(
        REPO / "models/organisms/demo_vlm"
    )


def test_an_edited_damaged_or_mismatched_guard_is_refused_naming_the_file(fitted, tmp_path):
    """The card is sealed to the weights: any edit of either, before any model loads, is refused."""
    original = fitted / "models/guards/demo_vlm"
    reference = tmp_path / "reference"
    reference.write_bytes(b"")
    assert (original / "probe.safetensors").stat().st_mode == reference.stat().st_mode, "no private mode"
    card = json.loads((original / "guard.json").read_text())
    other = "logistic" if card["probe"] == "mlp" else "mlp"
    edits = {
        "layer moved": lambda c, w: (c | {"layer": 0 if c["layer"] else 2}, w),
        "representation changed": lambda c, w: (c | {"representation": "vision_token"}, w),
        "probe kind changed": lambda c, w: (c | {"probe": other}, w),
        "weights cut short": lambda c, w: (c, w[: len(w) // 2]),
    }
    for name, edit in edits.items():
        folder = shutil.copytree(original, tmp_path / name.replace(" ", "_"))
        edited, weights = edit(card, (original / "probe.safetensors").read_bytes())
        (folder / "guard.json").write_text(json.dumps(edited))
        (folder / "probe.safetensors").write_bytes(weights)
        with pytest.raises(ConfigError, match=rf"{folder}/guard.json and probe.safetensors do not belong"):
            Guard.load(folder)
    unsealed = {k: v for k, v in card.items() if k != "seal"}
    for name, broken, message in (
        ("layer", card | {"layer": "three"}, r"is not a guard card \(layer: Input should be a valid integer"),
        ("unsealed", unsealed, "has no seal"),
    ):
        folder = shutil.copytree(original, tmp_path / name)
        (folder / "guard.json").write_text(json.dumps(broken))
        with pytest.raises(ConfigError, match=message):
            Guard.load(folder)


def test_halp_guard_answers_one_question(fitted, guard):
    _, images, questions = stored(fitted, 1)
    images[0].save(fitted / "one.png")
    result = halp(
        "guard", "--model", "demo_vlm", "--image", "one.png", "--question", questions[0], cwd=fitted
    )
    risk = float(result.stdout.split()[1])
    assert abs(risk - guard.assess(images, questions)[0].risk) <= 5e-4  # printed to 3 decimals
    assert "answer: " in result.stdout and "threshold" in result.stdout


def test_halp_guard_does_a_csv_reports_bad_rows_by_line_and_resumes(fitted, guard):
    questions = pd.read_csv(fitted / "demo/questions.csv", dtype=str, keep_default_na=False).head(9)
    questions.loc[2, "image_name"] = "gone.png"
    (fitted / "demo/images/broken.png").write_bytes(b"not a png")
    questions.loc[4, "image_name"] = "broken.png"
    questions.loc[6, "question"] = " "
    questions.to_csv(fitted / "mine.csv", index=False)
    command = ("guard", "--model", "demo_vlm", "--csv", "mine.csv", "--out", "risks.csv", "--batch-size", "2")
    result = halp(*command, cwd=fitted)
    assert "CSV line 4" in result.stderr and "image file not found" in result.stderr
    assert "CSV line 6" in result.stderr and "cannot be decoded" in result.stderr
    assert "CSV line 8" in result.stderr and "empty question" in result.stderr
    out = pd.read_csv(fitted / "risks.csv", dtype=str, keep_default_na=False).set_index("question_id")
    assert sorted(out.index) == sorted(questions.question_id)
    assert (out.error != "").sum() == 3 and (out.risk[out.error == ""] != "").all()

    # A kill mid-write leaves a cut-off last line: the rerun drops it and assesses only what is missing.
    text = (fitted / "risks.csv").read_text()
    (fitted / "risks.csv").write_text(text[: text.rindex("\n", 0, len(text) - 1) - 7])
    again = halp(*command, cwd=fitted)
    assert "rows already assessed" in again.stderr
    resumed = pd.read_csv(fitted / "risks.csv", dtype=str, keep_default_na=False).set_index("question_id")
    pd.testing.assert_frame_equal(resumed.sort_index(), out.sort_index())


def test_halp_guard_csv_edges_lose_nothing_and_say_what_is_wrong(fitted):
    images = fitted / "demo/images"
    Image.new("RGB", (4000, 8), "white").save(images / "wide.png")  # the processor refuses its aspect ratio
    Image.new("1", (15000, 15000)).save(images / "bomb.png")  # a decompression bomb to PIL: 27 KB on disk
    first = pd.read_csv(fitted / "demo/questions.csv", dtype=str).iloc[0]
    questions = pd.DataFrame(  # only what a question needs: no ground truth, dataset or is_relational
        {
            "question_id": ["q_multiline", "q_wide", "q_bomb", "q_later"],
            "image_name": [first.image_name, "wide.png", "bomb.png", "later.png"],
            "question": [f"{first.question}\n(two lines)", "Is there a circle?", "Is it red?", "A square?"],
        }
    )
    questions.to_csv(fitted / "edges.csv", index=False)
    command = [
        "guard",
        "--model",
        "demo_vlm",
        "--csv",
        "edges.csv",
        "--out",
        "edges_out.csv",
        "--batch-size",
        "4",
    ]
    result = halp(*command, cwd=fitted)  # header line 1, the quoted question lines 2-3
    assert "CSV line 4 ('q_wide')" in result.stderr and "aspect ratio" in result.stderr
    assert "CSV line 5 ('q_bomb')" in result.stderr and "too large to decode safely" in result.stderr
    assert "CSV line 6 ('q_later')" in result.stderr and "image file not found" in result.stderr
    out = pd.read_csv(fitted / "edges_out.csv", dtype=str, keep_default_na=False).set_index("question_id")
    assert out.risk["q_multiline"] != "" and out.error["q_multiline"] == "", "the batch's good row is kept"

    shutil.copy(images / first.image_name, images / "later.png")  # the user fixes one row and reruns
    again = halp(*command, cwd=fitted)
    assert "3 rows with an error are tried again" in again.stderr
    out = pd.read_csv(fitted / "edges_out.csv", dtype=str, keep_default_na=False)
    assert sorted(out.question_id) == sorted(questions.question_id), "one row per question, never two"
    assert out.set_index("question_id").risk["q_later"] != ""

    other = halp(*command, "--coverage", "0.7", cwd=fitted, check=False)
    assert other.returncode == 2 and "was begun with other settings" in other.stderr
    with writing(fitted / "edges_out.csv"):  # another run writing the same output
        busy = halp(*command, cwd=fitted, check=False)
    assert busy.returncode == 2 and "is being written by" in busy.stderr
    for option, message in (
        (["--batch-size", "0"], "--batch-size must be at least 1, not 0"),
        (["--out", "edges.csv"], "is the input CSV"),
        (["--out", "demo/questions.csv"], "is not a guard's output"),
    ):
        refused = halp(*command, *option, cwd=fitted, check=False)
        assert refused.returncode == 2 and message in refused.stderr, option
    questions.iloc[[2]].to_csv(fitted / "bombs.csv", index=False)
    nothing = halp(*command[:4], "bombs.csv", "--out", "bombs_out.csv", cwd=fitted, check=False)
    assert nothing.returncode == 2 and "none of the 1 rows could be assessed" in nothing.stderr


def test_a_full_disk_stops_guard_csv_with_one_message_and_the_rerun_loses_and_doubles_nothing(fitted):
    questions = pd.read_csv(fitted / "demo/questions.csv", dtype=str).head(16)
    questions.to_csv(fitted / "many.csv", index=False)
    command = [
        "guard",
        "--model",
        "demo_vlm",
        "--csv",
        "many.csv",
        "--out",
        "many_out.csv",
        "--batch-size",
        "4",
    ]
    full = halp(*command, cwd=fitted, check=False, preexec_fn=file_limit(400))
    assert full.returncode == 2 and "Traceback" not in full.stderr, full.stderr
    assert "could not write many_out.csv (File too large; " in full.stderr
    assert "every row written is kept, and the rerun goes on from there" in full.stderr
    halp(*command, cwd=fitted)
    out = pd.read_csv(fitted / "many_out.csv", dtype=str, keep_default_na=False)
    assert sorted(out.question_id) == sorted(questions.question_id) and (out.error == "").all()
