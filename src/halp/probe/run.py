"""`halp probe`: for every (representation, layer), how well do probes predict hallucination?"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from joblib import Parallel, delayed

from halp.config import Params, ProbeSettings
from halp.data.optional import holds_rows
from halp.jsonfile import write_json
from halp.label.run import read_verdicts
from halp.probe import risk_coverage
from halp.probe.classifiers import fit_probes
from halp.probe.features import ATTENTION_CELLS, attention_cell, stacked
from halp.probe.headline import best_probe, cell_layer, headline
from halp.probe.metrics import aggregate, auroc, bootstrap_auroc, evaluate
from halp.probe.risk_coverage import score_column
from halp.probe.splits import N_FOLDS, DegenerateLabels, Split, check_labels, grouped_splits
from halp.probe.transfer import Cell, transfer
from halp.store import Embeddings, open_finished
from halp.store.parts import IMAGE_ATTENTION

log = logging.getLogger(__name__)


def stored_attention(emb: Embeddings) -> np.ndarray:
    """[N, L, 4 x heads] over every extracted layer (`features.stacked`); KeyError if none was extracted."""
    return stacked(
        {name: np.stack([emb.get(name, k) for k in emb.layers], axis=1) for name in IMAGE_ATTENTION}
    )


def cell_features(
    emb: Embeddings, representation: str, layer: int | None, attention: np.ndarray | None = None
) -> np.ndarray:
    """What a grid cell's probe reads, [N, width]; `attention`: `stored_attention(emb)` if already read."""
    if representation not in ATTENTION_CELLS:
        return emb.get(representation, layer)
    query = emb.get("query_token", layer) if representation == "query_token+image_attention" else None
    index = None if layer is None else emb.layers.index(layer)
    attention = stored_attention(emb) if attention is None else attention
    return attention_cell(representation, attention, index, query)


def representations(emb: Embeddings) -> Iterator[tuple[str, int | None, np.ndarray]]:
    """Every cell of the grid: VF; VT and QT at each layer; where the extraction stored image attention,
    that at each layer, all layers' concatenated (DHCP's input) and the query token beside them."""
    cells = [
        ("vision_only", None),
        *((rep, k) for rep in ("vision_token", "query_token") for k in emb.layers),
    ]
    try:
        attention = stored_attention(emb)  # read once for all the attention cells
    except KeyError:  # extracted without image attention
        attention = None
    else:
        cells += [("image_attention", k) for k in emb.layers] + [("image_attention_all", None)]
        cells += [("query_token+image_attention", k) for k in emb.layers]
    for representation, layer in cells:
        yield representation, layer, cell_features(emb, representation, layer, attention)


def output_baselines(emb: Embeddings) -> dict[str, np.ndarray]:
    """Scores from the first generated token alone (higher = more likely hallucinated)."""
    logprobs = emb.get("first_token_logprobs").astype(np.float64)  # [N, k], sorted descending
    top = np.exp(logprobs)
    renormalised = top / top.sum(axis=1, keepdims=True)
    return {
        "first_token_max_prob": -top[:, 0],
        "first_token_entropy": -(renormalised * np.log(renormalised)).sum(axis=1),
    }


def metadata_scores(keys: np.ndarray, y: np.ndarray, train: np.ndarray) -> np.ndarray:
    """Each sample's score is the training split's hallucination rate of its (source, category): what a
    probe must beat to show it reads the model's state, not which kind of question it was asked (a key
    the training split lacks gets the training split's overall rate)."""
    rates = pd.Series(y[train]).groupby(keys[train]).mean()
    return pd.Series(keys).map(rates).fillna(y[train].mean()).to_numpy(np.float64)


def oriented(y_val: np.ndarray, s_val: np.ndarray, s_test: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """A baseline score that ranks backwards on the validation split is flipped (never on test)."""
    flip = auroc(y_val, s_val) < 0.5
    return (-s_val, -s_test, True) if flip else (s_val, s_test, False)


def read_breakdown(path: Path | None, sample_ids: pd.Series) -> pd.Series | None:
    """Each sample's group from a CSV (question_id and one column, e.g. the demo's planted mechanism),
    named by that column; samples it does not list are "unlisted". None for a CSV without rows."""
    if not holds_rows(path, "probe.breakdown"):
        return None
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    if "question_id" not in table or len(table.columns) != 2:
        raise ValueError(
            f"{path} must have two columns, question_id and a group; it has {list(table.columns)}"
        )
    groups = table.set_index("question_id").iloc[:, 0]
    return sample_ids.map(groups).fillna("unlisted").rename(groups.name).reset_index(drop=True)


def load_labelled(
    params: Params, model_name: str, allow_incomplete: bool = False
) -> tuple[Embeddings, np.ndarray, np.ndarray]:
    emb = open_finished(params.extract.out_dir / model_name, allow_incomplete)
    labels_path = params.label.out_dir / f"{model_name}.csv"
    if not labels_path.is_file():
        raise FileNotFoundError(f"{labels_path} not found: run `halp label --model {model_name}` first")
    labels = read_verdicts(labels_path, "sample_id", "hallucinated")
    missing = set(emb.meta.sample_id) - set(labels.index)
    if missing:
        raise ValueError(
            f"{len(missing)} extracted samples have no label in {labels_path}; rerun `halp label`"
        )
    y = labels.loc[emb.meta.sample_id].to_numpy().astype(np.int64)
    return emb, y, emb.meta.image_id.to_numpy()


class Grid(NamedTuple):
    """What `probe_grid` measured: a row per (representation, layer, probe), the baselines' metrics,
    each sample's out-of-fold test score (`out_of_fold`), and the splits with each probe's (validation,
    test) scores on every one, keyed by that score's column: the transfer runs reuse both instead of
    drawing the splits and fitting on all groups again."""

    rows: list[dict]
    baselines: dict
    test_scores: pd.DataFrame
    splits: list[Split]
    split_scores: dict[str, list[tuple[np.ndarray, np.ndarray]]]


def probe_grid(
    features: Iterable[tuple[str, int | None, np.ndarray]],
    baselines: dict[str, np.ndarray | Callable[[np.ndarray], np.ndarray]],
    y: np.ndarray,
    groups: np.ndarray,
    settings: ProbeSettings,
    control: str | None = None,
    breakdown: np.ndarray | None = None,
) -> Grid:
    """Every probe on every representation over the same seeded grouped splits, one representation per
    worker process; then the baselines on the same test splits (a callable baseline is given each
    split's training rows). `breakdown` labels each sample with a group to report AUROC within.

    The test scores come with each sample's fold and label: what selective answering (risk-coverage)
    is evaluated on."""
    splits = grouped_splits(y, groups, settings.seeds)
    fit_labels = []  # per seed: what probes fit on (training and validation rows permuted for the control)
    for seed, (train, val, _) in enumerate(splits):
        fit_labels.append(y.copy())
        if control == "shuffled":  # validation too: it picks the epoch, and true labels there leak signal
            fitted = np.concatenate([train, val])
            fit_labels[-1][fitted] = np.random.default_rng(seed).permutation(y[fitted])
    jobs = (
        delayed(probe_representation)(
            rep, layer, np.asarray(x, np.float32), y, fit_labels, splits, settings, breakdown
        )
        for rep, layer, x in features
    )
    rows = []  # mmap_mode "c": workers share each representation's pages and see a writable array
    fold = np.full(len(y), -1)
    for k, (_, _, test) in enumerate(splits[:N_FOLDS]):
        fold[test] = k
    test_scores, split_scores = {"fold": fold, "hallucinated": y}, {}
    for result in Parallel(n_jobs=settings.workers or -1, mmap_mode="c", return_as="generator")(jobs):
        for row in result:
            log.info("%(representation)s layer %(layer)s %(probe)s: AUROC %(auroc_mean).3f", row)
            name = score_column(row)
            split_scores[name] = row.pop("split_scores")
            test_scores[name] = out_of_fold(splits, split_scores[name], len(y))
        rows += result
    scored = {}
    for name, score in baselines.items():
        per_split = [score(train) if callable(score) else score for train, _, _ in splits]
        pairs = [
            oriented(y[val], s[val], s[test]) for s, (_, val, test) in zip(per_split, splits, strict=True)
        ]
        scores = [(v, t) for v, t, _ in pairs]
        scored[name] = _over_splits(y, splits, settings.bootstrap, scores, breakdown)
        scored[name]["flipped_seeds"] = sum(flipped for _, _, flipped in pairs)
        test_scores[name] = out_of_fold(splits, scores, len(y))
    return Grid(rows, scored, pd.DataFrame(test_scores), splits, split_scores)


def out_of_fold(splits: list[Split], scores: list[tuple], n: int) -> np.ndarray:
    """Each sample's test score from the first pass over the folds (splits 0-4 test every sample once);
    NaN for a sample that fewer seeds than folds left untested."""
    found = np.full(n, np.nan)
    for (_, _, test), (_, s_test) in zip(splits[:N_FOLDS], scores[:N_FOLDS], strict=False):
        found[test] = s_test
    return found


def probe_representation(
    rep: str,
    layer: int | None,
    x: np.ndarray,
    y: np.ndarray,
    fit_labels: list[np.ndarray],
    splits: list[Split],
    settings: ProbeSettings,
    groups: np.ndarray | None = None,
) -> list[dict]:
    """Every probe on one representation over every split, on one thread: the grid runs one of these per
    core (2 single-threaded fits at once beat one on two threads by 1.3x on this CPU's small matrices),
    and the numbers do not depend on how many workers ran."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fitted = [
            fit_probes(x, fit_labels[seed], split, settings.probes, seed, settings.mlp_rank)
            for seed, split in enumerate(splits)
        ]
    finally:
        torch.set_num_threads(before)
    rows = []
    for probe in settings.probes:
        scores = [scores[probe] for scores in fitted]
        metrics = _over_splits(y, splits, settings.bootstrap, scores, groups)
        rows.append({"representation": rep, "layer": layer, "probe": probe, "split_scores": scores} | metrics)
    return rows


def _over_splits(
    y: np.ndarray, splits: list[Split], bootstrap: int, scores: list[tuple], groups: np.ndarray | None
) -> dict:
    """Metrics aggregated over the splits, from each split's (validation, test) scores, and the validation
    AUROC (what may choose a probe: the test split must not); with `groups` (one label per sample, e.g. the
    planted mechanism) also the test AUROC within each group, as `auroc_in_<group>` (mean over the seeds
    whose test rows of that group hold both classes)."""
    per_seed, boots, validation = [], [], []
    for seed, ((_, val, test), (s_val, s_test)) in enumerate(zip(splits, scores, strict=True)):
        per_seed.append(evaluate(y[val], s_val, y[test], s_test))
        boots.append(bootstrap_auroc(y[test], s_test, bootstrap, seed))
        validation.append(auroc(y[val], s_val))
    metrics = aggregate(per_seed, boots) | {"val_auroc_mean": float(np.mean(validation))}
    for group in [] if groups is None else sorted(set(groups)):
        within = [
            auroc(y[test][inside], s_test[inside])
            for (_, _, test), (_, s_test) in zip(splits, scores, strict=True)
            if len(set(y[test][inside := groups[test] == group])) == 2
        ]
        metrics[f"auroc_in_{group}"] = float(np.mean(within)) if within else float("nan")
    return metrics


def group_rates(breakdown: np.ndarray, category: np.ndarray, y: np.ndarray) -> dict:
    """Each group's size and hallucination rate, overall and per question category: where the failures
    sit before any probe reads them."""
    rates = {}
    for g in sorted(set(breakdown)):
        inside = breakdown == g
        rates[g] = {
            "n_samples": int(inside.sum()),
            "hallucination_rate": float(y[inside].mean()),
            "by_category": {
                c: float(y[inside & (category == c)].mean()) for c in sorted(set(category[inside]))
            },
        }
    return rates


def transfer_report(
    emb: Embeddings, y: np.ndarray, grid: Grid, settings: ProbeSettings, breakdown: pd.Series | None
) -> dict:
    """The `transferred_cells`, each trained on one group and tested on the others, for the groups of the
    samples' dataset, category and the breakdown's column; the probe trained on every group is the grid's
    own fit."""
    labels = {"dataset": emb.meta.source.to_numpy(), "category": emb.meta.category.to_numpy()}
    if breakdown is not None:
        labels[str(breakdown.name)] = breakdown.to_numpy()
    cells = [
        Cell(
            row,
            cell_features(emb, row.representation, cell_layer(row)),
            grid.split_scores[score_column(row)],
            matrix=row.representation in TRANSFERRED,
        )
        for row in transferred_cells(pd.DataFrame(grid.rows))
    ]
    return transfer(cells, y, grid.splits, labels, settings)


TRANSFERRED = ("vision_only", "vision_token", "query_token")  # HALP's three, always


def transferred_cells(table: pd.DataFrame) -> list[pd.Series]:
    """The cells the transfer runs train: each of HALP's representations' chosen on validation, and the
    grid's best on validation wherever it is (the cell `halp guard-fit` saves, whose card quotes its
    left-out numbers), e.g. the query token with image attention."""
    chosen = [row for rep in TRANSFERRED if (row := best_probe(table, rep)) is not None]
    guard = best_probe(table)
    return chosen if guard is None or guard.representation in TRANSFERRED else [*chosen, guard]


def probe_model(
    params: Params, model_name: str, control: str | None = None, allow_incomplete: bool = False
) -> Path:
    params.model(model_name)
    settings = params.probe
    emb, y, groups = load_labelled(params, model_name, allow_incomplete)
    report: dict = {
        "model": model_name,
        "control": control or "none",
        "n_samples": len(y),
        "n_hallucinated": int(y.sum()),
        "n_images": len(np.unique(groups)),
        "num_layers": int(emb.attrs["num_layers"]),  # decoder blocks: a layer's relative depth
        "seeds": settings.seeds,
    }
    table, test_scores = pd.DataFrame(), pd.DataFrame({"sample_id": []})
    try:
        check_labels(y, groups)
        keys = (emb.meta.source + " / " + emb.meta.category).to_numpy()
        baselines = output_baselines(emb) | {"metadata": partial(metadata_scores, keys, y)}
        breakdown = read_breakdown(settings.breakdown, emb.meta.sample_id)
        by_group = None if breakdown is None else breakdown.to_numpy()
        grid = probe_grid(representations(emb), baselines, y, groups, settings, control, by_group)
        test_scores = pd.concat([emb.meta.sample_id.reset_index(drop=True), grid.test_scores], axis=1)
        table = pd.DataFrame(grid.rows)
        report |= {"status": "ok", "probes": _nest(grid.rows), "baselines": grid.baselines}
        if not control:  # selective answering on the out-of-fold test scores: the report's abstention
            report["risk_coverage"] = risk_coverage.evaluate(table, test_scores, settings.bootstrap)
        if not control and settings.transfer:
            report["transfer"] = transfer_report(emb, y, grid, settings, breakdown)
        if breakdown is not None:
            report["groups"] = group_rates(by_group, emb.meta.category.to_numpy(), y)
    except DegenerateLabels as err:
        log.warning("%s: no probes trained: %s", model_name, err)
        report |= {"status": "degenerate", "message": str(err)}
    # A control is a sanity check, not a result: it stays out of the DVC-tracked metrics.
    out_dir, name = (
        (settings.control_dir, f"{model_name}_{control}") if control else (settings.out_dir, model_name)
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / f"{name}.json", report)
    table.to_csv(out_dir / f"{name}.csv", index=False, lineterminator="\n")
    if not control:
        settings.test_scores_dir.mkdir(parents=True, exist_ok=True)
        test_scores.to_csv(
            settings.test_scores_dir / f"{name}.csv", index=False, float_format="%.7g", lineterminator="\n"
        )
        settings.headline_dir.mkdir(parents=True, exist_ok=True)
        write_json(settings.headline_dir / f"{name}.json", headline(report, table))
    return out_dir / f"{name}.json"


def _nest(rows: list[dict]) -> dict:
    """{representation: {layer or "pooled": {probe: metrics}}}, the shape `dvc metrics show` flattens well."""
    nested: dict = {}
    for row in rows:
        layer = "pooled" if row["layer"] is None else str(row["layer"])
        metrics = {k: v for k, v in row.items() if k not in ("representation", "layer", "probe")}
        nested.setdefault(row["representation"], {}).setdefault(layer, {})[row["probe"]] = metrics
    return nested
