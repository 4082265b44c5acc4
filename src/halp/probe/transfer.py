"""How far a probe carries: trained on one kind of question, tested on the others.

Hallucination probes trained on one task often fall towards chance on another (Orgad et al. 2024; Lookback
Lens: 0.914 AUROC in-task, 0.853 across tasks), while HALP reports in-distribution test AUROC only. For
each representation's cell chosen on validation, over the grid's own grouped splits (no image on both
sides): a probe trained on one group's training rows is tested on every group's test rows (its own group,
the diagonal, is the ceiling), and one trained on every other group is tested on the group left out,
beside the probe trained on all groups (HALP's protocol) tested on the same rows.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from joblib import Parallel, delayed

from halp.config import ProbeSettings
from halp.probe.classifiers import fit_probes
from halp.probe.headline import cell_layer
from halp.probe.metrics import auroc, bootstrap_auroc
from halp.probe.splits import N_FOLDS, Split

MIN_PER_CLASS = N_FOLDS  # a group smaller than this in either class has no AUROC worth a cell


def eligible_groups(labels: np.ndarray, y: np.ndarray) -> tuple[list[str], dict[str, str]]:
    """The groups with enough of both classes to train and test on, and the reason for each one left out."""
    kept, skipped = [], {}
    for group in sorted(set(labels)):
        inside = labels == group
        positives, total = int(y[inside].sum()), int(inside.sum())
        if min(positives, total - positives) < MIN_PER_CLASS:
            skipped[group] = (
                f"{positives} of {total} samples hallucinated: fewer than {MIN_PER_CLASS} of each class"
            )
        else:
            kept.append(group)
    return kept, skipped


def _both_classes(y: np.ndarray) -> bool:
    return len(y) > 1 and 0 < y.sum() < len(y)


def _summary(tested: list[tuple[np.ndarray, np.ndarray]], bootstrap: int) -> dict:
    """Mean test AUROC over the seeds that could test, with the 95% interval of their pooled bootstrap."""
    if not tested:
        return {"n_seeds": 0, "reason": "no seed's split held both classes in its training and test rows"}
    aurocs = [auroc(y, s) for y, s in tested]
    pooled = np.concatenate([bootstrap_auroc(y, s, bootstrap, seed) for seed, (y, s) in enumerate(tested)])
    pooled = pooled if len(pooled) else np.array(aurocs)
    return {
        "auroc_mean": float(np.mean(aurocs)),
        "auroc_ci_low": float(np.percentile(pooled, 2.5)),
        "auroc_ci_high": float(np.percentile(pooled, 97.5)),
        "n_seeds": len(tested),
    }


def tested_on_seed(
    x: np.ndarray,
    y: np.ndarray,
    seed: int,
    split: Split,
    groupings: dict[str, tuple[np.ndarray, list[str]]],
    probe: str,
    rank: int | None,
) -> dict[tuple, tuple[np.ndarray, np.ndarray]]:
    """One cell's fits on one split, on one thread (a worker runs one (cell, seed) at a time): each
    (grouping, kind, trained group[, tested group]) to the tested rows' labels and scores. `groupings`
    maps a name to (each sample's group, the groups eligible to train and test)."""
    train, val, test = split
    fits = {("all",): (train, val)}
    for name, (labels, groups) in groupings.items():
        for g in groups:
            fits[name, "trained_on", g] = (train[labels[train] == g], val[labels[val] == g])
            fits[name, "left_out", g] = (train[labels[train] != g], val[labels[val] != g])
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        scores = {
            key: fit_probes(x, y, (fit_train, fit_val, test), [probe], seed, rank)[probe][1]
            for key, (fit_train, fit_val) in fits.items()
            if _both_classes(y[fit_train]) and _both_classes(y[fit_val])
        }
    finally:
        torch.set_num_threads(before)
    tested = {}
    for name, (labels, groups) in groupings.items():
        for h in groups:
            inside = labels[test] == h
            if not _both_classes(y[test][inside]):
                continue
            targets = [((name, "trained_on", g), (name, "trained_on", g, h)) for g in groups]
            targets += [(("all",), (name, "in_distribution", h)), ((name, "left_out", h),) * 2]
            for fit, key in targets:
                if fit in scores:
                    tested[key] = (y[test][inside], scores[fit][inside])
    return tested


def summarise(
    by_seed: list[dict[tuple, tuple]], groupings: dict[str, tuple[np.ndarray, list[str]]], bootstrap: int
) -> dict:
    """{grouping: {"trained_on": {g: {h: metrics}}, "left_out": {g: {"out_of_group", "in_distribution"}}}}
    for one cell, from its seeds' tested rows."""

    def metrics(*key: str) -> dict:
        return _summary([tested[key] for tested in by_seed if key in tested], bootstrap)

    return {
        name: {
            "trained_on": {g: {h: metrics(name, "trained_on", g, h) for h in groups} for g in groups},
            "left_out": {
                h: {
                    "out_of_group": metrics(name, "left_out", h),
                    "in_distribution": metrics(name, "in_distribution", h),
                }
                for h in groups
            },
        }
        for name, (_, groups) in groupings.items()
    }


def transfer(
    cells: list[tuple[pd.Series, np.ndarray]],
    y: np.ndarray,
    splits: list[Split],
    labels_by_grouping: dict[str, np.ndarray],
    settings: ProbeSettings,
) -> dict:
    """For each grouping of the samples (e.g. dataset, category, planted mechanism): its groups, the
    groups left out and why, and per chosen cell (a grid row and its features) the transfer metrics; a
    grouping with fewer than two usable groups holds only the reason. One worker per cell."""
    report, usable = {}, {}
    for name, labels in labels_by_grouping.items():
        groups, skipped = eligible_groups(labels, y)
        if len(groups) < 2:
            everything = sorted(set(labels))
            reason = f"one group only ({everything[0]})"
            if len(everything) > 1:
                enough = f"{len(groups)} of {len(everything)} groups hold {MIN_PER_CLASS} of each class"
                reason = f"{enough}, transfer needs 2"
            report[name] = {"skipped_because": reason, "skipped": skipped}
            continue
        usable[name] = (labels, groups)
        sizes = {
            g: {"n_samples": int((labels == g).sum()), "n_hallucinated": int(y[labels == g].sum())}
            for g in groups
        }
        report[name] = {"groups": sizes, "skipped": skipped, "cells": {}}
    if not usable:
        return report
    jobs = (  # one per (cell, seed): fifteen similar jobs keep both cores busy to the end, three did not
        delayed(tested_on_seed)(
            np.asarray(x, np.float32), y, seed, split, usable, row.probe, settings.mlp_rank
        )
        for row, x in cells
        for seed, split in enumerate(splits)
    )
    tested = Parallel(n_jobs=settings.workers or -1, mmap_mode="c")(jobs)
    for i, (row, _) in enumerate(cells):
        by_seed = tested[i * len(splits) : (i + 1) * len(splits)]
        for name, metrics in summarise(by_seed, usable, settings.bootstrap).items():
            report[name]["cells"][row.representation] = {
                "layer": cell_layer(row),
                "probe": row.probe,
            } | metrics
    return report
