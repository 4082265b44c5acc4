"""`halp guard-fit`: the probe a guard uses, fitted once on the labelled extraction and saved with all it
takes to use and trust it.

Which probe: `guard.representation` / `layer` / `probe`, the rest chosen by the probe grid's validation
AUROC (the test split never chooses). One grouped split (by image, as the grid's first) trains it on 60%,
early-stops and calibrates it on 20% (Platt scaling of the probe's logit), sets the coverage thresholds
there, and holds out 20% whose AUROC, interval and hallucination rate when answering each coverage are
reported: nothing is fitted on those rows.
"""

from __future__ import annotations

import json
import logging
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression

from halp.config import ConfigError, Params
from halp.guard.guard import calibrated, write_guard
from halp.models.fingerprint import model_fingerprint
from halp.models.loading import read_config
from halp.probe.classifiers import LEARNING_RATE, train_probes
from halp.probe.features import ATTENTION_CELLS
from halp.probe.headline import best_probe, cell_layer
from halp.probe.metrics import auroc, bootstrap_auroc
from halp.probe.run import cell_features, load_labelled
from halp.probe.splits import check_labels, grouped_splits

log = logging.getLogger(__name__)
PACKAGES = ("halp", "torch", "transformers", "scikit-learn", "numpy", "safetensors")


def choose_cell(rows: pd.DataFrame, params: Params, model_name: str, source: Path) -> pd.Series:
    """The probe grid's row the guard settings name, the rest filled by the highest validation AUROC."""
    if "val_auroc_mean" not in rows:
        raise ValueError(f"{source} predates validation AUROCs: run `halp probe --model {model_name}` again")
    wanted = params.guard
    chosen = rows
    for key in ("representation", "layer", "probe"):
        if (value := getattr(wanted, key)) is not None:
            chosen = chosen[chosen[key] == value]
    if chosen.empty:
        raise ConfigError(
            f"guard: no probe of {model_name} matches representation={wanted.representation}, "
            f"layer={wanted.layer}, probe={wanted.probe}; {source} holds layers "
            f"{sorted(int(k) for k in rows.layer.dropna().unique())} and probes "
            f"{sorted(rows.probe.unique())}. Change guard in {params._source}"
        )
    return best_probe(chosen)


def coverage_thresholds(risk: np.ndarray, coverages: list[float]) -> dict[str, float]:
    """The risk at or below which a `coverage` share of these questions falls: above it, flag."""
    return {f"{c:g}": float(np.quantile(risk, c)) for c in coverages}


def fit_guard(params: Params, model_name: str, allow_incomplete: bool = False) -> Path:
    settings = params.model(model_name)
    table = params.probe.out_dir / f"{model_name}.csv"
    if not table.is_file():
        raise FileNotFoundError(f"{table} not found: run `halp probe --model {model_name}` first")
    emb, y, groups = load_labelled(params, model_name, allow_incomplete)
    check_labels(y, groups)
    cell = choose_cell(pd.read_csv(table), params, model_name, table)
    rep, kind = cell.representation, cell.probe
    layer = cell_layer(cell)
    x = np.asarray(cell_features(emb, rep, layer), np.float32)
    split = train, val, test = grouped_splits(y, groups, 1)[0]
    trained = train_probes(x, y, split, [kind], seed=0, rank=params.probe.mlp_rank)[kind]
    scores = {
        name: trained.scores(torch.from_numpy(x[rows])) for name, rows in (("val", val), ("test", test))
    }
    platt = LogisticRegression(C=1e6).fit(scores["val"][:, None], y[val])
    calibration = {"slope": float(platt.coef_[0, 0]), "intercept": float(platt.intercept_[0])}
    risk = {name: calibrated(s, calibration) for name, s in scores.items()}
    thresholds = coverage_thresholds(risk["val"], params.guard.coverages)
    boots = bootstrap_auroc(y[test], scores["test"], params.probe.bootstrap, seed=0)
    config, _ = read_config(settings)
    text = getattr(config, "text_config", config)
    card = {
        "model": model_name,
        "source": settings.model,
        "revision": settings.revision,
        "fingerprint": model_fingerprint(settings.model, settings.revision),
        "model_type": config.model_type,
        "n_blocks": int(text.num_hidden_layers),
        "hidden_size": int(text.hidden_size),
        "dtype": settings.dtype,
        "max_new_tokens": settings.max_new_tokens,
        "representation": rep,
        "layer": layer,
        **({"attention_layers": emb.layers} if rep in ATTENTION_CELLS else {}),
        "width": int(x.shape[1]),
        "probe": kind,
        "probe_settings": {"mlp_rank": params.probe.mlp_rank, "learning_rate": LEARNING_RATE[kind]},
        "chosen_by": "validation AUROC of the probe grid"
        + (" among the cells guard settings allow" if _constrained(params) else ""),
        "label_judge": params.label.judge,
        "n_samples": len(y),
        "n_train": len(train),
        "n_calibration": len(val),
        "n_holdout": len(test),
        "hallucination_rate": float(y.mean()),
        "cross_validated": {
            k: float(cell[k]) for k in ("auroc_mean", "auroc_ci_low", "auroc_ci_high", "val_auroc_mean")
        },
        "holdout": {
            "auroc": auroc(y[test], scores["test"]),
            "auroc_ci_low": float(np.percentile(boots, 2.5)),
            "auroc_ci_high": float(np.percentile(boots, 97.5)),
            "at_coverage": {c: _answered(y[test], risk["test"], t) for c, t in thresholds.items()},
        },
        "unseen_kinds_of_question": unseen_kinds(params.probe.out_dir / f"{model_name}.json", cell),
        "calibration": calibration | {"method": "Platt scaling on the calibration rows"},
        "thresholds": thresholds,
        "versions": {name: version(name) for name in PACKAGES},
    }
    folder = params.guard.out_dir / model_name
    write_guard(folder, card, {k: v.detach().contiguous() for k, v in trained.model.state_dict().items()})
    log.info(
        "%s guard: %s layer %s %s, holdout AUROC %.3f", model_name, rep, layer, kind, card["holdout"]["auroc"]
    )
    return folder


def unseen_kinds(probe_results: Path, cell: pd.Series) -> dict:
    """What to expect on a kind of question the guard never saw: per grouping (dataset, category, the
    breakdown's column), each group's test AUROC when left out of training beside that with it, from the
    probe stage's transfer results for this cell; a reason where they do not exist."""
    transfer = json.loads(probe_results.read_text()).get("transfer") if probe_results.is_file() else None
    if transfer is None:
        return {"not_measured": f"{probe_results} holds no transfer results (probe.transfer is false)"}
    expected = {}
    for grouping, found in transfer.items():
        measured = found.get("cells", {}).get(cell.representation)
        if measured is None:
            expected[grouping] = {
                "not_measured": found.get("skipped_because", "no cell of this representation")
            }
        elif (measured["layer"], measured["probe"]) != (cell_layer(cell), cell.probe):
            expected[grouping] = {
                "not_measured": f"transfer was measured for {cell.representation} layer {measured['layer']} "
                f"{measured['probe']}, the cell chosen on validation, not this guard's"
            }
        else:
            expected[grouping] = {
                group: {protocol: tested[protocol].get("auroc_mean") for protocol in tested}
                for group, tested in measured["left_out"].items()
            } | {"skipped": found["skipped"]}
    return expected


def _constrained(params: Params) -> bool:
    return any(getattr(params.guard, k) is not None for k in ("representation", "layer", "probe"))


def _answered(y: np.ndarray, risk: np.ndarray, threshold: float) -> dict[str, float]:
    answered = risk <= threshold
    return {
        "coverage": float(answered.mean()),
        "hallucination_rate_answered": float(y[answered].mean()) if answered.any() else float("nan"),
    }
