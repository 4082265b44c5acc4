"""How far a probe carries: trained on one kind of question, tested on the others.

Hallucination probes trained on one task often fall towards chance on another (Orgad et al. 2024; Lookback
Lens: 0.914 AUROC in-task, 0.853 across tasks), while HALP reports in-distribution test AUROC only. For
each representation's cell chosen on validation, over the grid's own grouped splits (no image on both
sides): a probe trained on one group's training rows is tested on every group's test rows (its own group,
the diagonal, is the ceiling), and one trained on every other group is tested on the group left out,
beside the probe trained on all groups (HALP's protocol: the grid's own fit) tested on the same rows. A
guard's cell outside those representations gets only the fits that leave a group out: its card quotes
nothing else.
"""

from __future__ import annotations

from typing import NamedTuple

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


class Cell(NamedTuple):
    """A chosen cell: its grid row, its features, the grid's (validation, test) scores of that probe on
    each split (trained on every group), and whether it wants the whole matrix (trained on each group,
    tested on each) or only each group left out (what a guard's card quotes)."""

    row: pd.Series
    x: np.ndarray
    split_scores: list[tuple[np.ndarray, np.ndarray]]
    matrix: bool = True


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
    trained_on_all: np.ndarray,
    matrix: bool,
) -> dict[tuple, tuple[np.ndarray, np.ndarray]]:
    """One cell's fits on one split, on one thread (a worker runs one (cell, seed) at a time): each
    (grouping, kind, trained group[, tested group]) to the tested rows' labels and scores. `groupings`
    maps a name to (each sample's group, the groups eligible to train and test); `trained_on_all` is
    the grid's test scores of the probe trained on every group, on this split; without `matrix`, only the
    fits that leave a group out.

    Fits on the same rows are fitted once: with two groups, training without one is training on the
    other."""
    train, val, test = split
    fits = {}
    for name, (labels, groups) in groupings.items():
        for g in groups:
            if matrix:
                fits[name, "trained_on", g] = (train[labels[train] == g], val[labels[val] == g])
            fits[name, "left_out", g] = (train[labels[train] != g], val[labels[val] != g])
    scores, by_rows = {("all",): trained_on_all}, {}
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for key, (fit_train, fit_val) in fits.items():
            if not (_both_classes(y[fit_train]) and _both_classes(y[fit_val])):
                continue
            rows = (fit_train.tobytes(), fit_val.tobytes())
            if rows not in by_rows:
                by_rows[rows] = fit_probes(x, y, (fit_train, fit_val, test), [probe], seed, rank)[probe][1]
            scores[key] = by_rows[rows]
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
    by_seed: list[dict[tuple, tuple]],
    groupings: dict[str, tuple[np.ndarray, list[str]]],
    bootstrap: int,
    matrix: bool,
) -> dict:
    """{grouping: {"trained_on": {g: {h: metrics}}, "left_out": {g: {"out_of_group", "in_distribution"}}}}
    for one cell, from its seeds' tested rows; "trained_on" only with `matrix`."""

    def metrics(*key: str) -> dict:
        return _summary([tested[key] for tested in by_seed if key in tested], bootstrap)

    def matrix_of(name: str, groups: list[str]) -> dict:
        return {"trained_on": {g: {h: metrics(name, "trained_on", g, h) for h in groups} for g in groups}}

    return {
        name: (matrix_of(name, groups) if matrix else {})
        | {
            "left_out": {
                h: {
                    "out_of_group": metrics(name, "left_out", h),
                    "in_distribution": metrics(name, "in_distribution", h),
                }
                for h in groups
            }
        }
        for name, (_, groups) in groupings.items()
    }


def transfer(
    cells: list[Cell],
    y: np.ndarray,
    splits: list[Split],
    labels_by_grouping: dict[str, np.ndarray],
    settings: ProbeSettings,
) -> dict:
    """For each grouping of the samples (e.g. dataset, category, planted mechanism): its groups, the
    groups left out and why, and per chosen cell the transfer metrics over the first
    `settings.transfer_seeds` splits; a grouping with fewer than two usable groups holds only the reason.
    One worker per (cell, seed)."""
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
    # One job per (cell, seed), the MLP cells first: a logistic fit takes a tenth of an MLP's time, so
    # those jobs fill the end and both cores stay busy to the last second.
    order = sorted(range(len(cells)), key=lambda i: cells[i].row.probe != "mlp")
    jobs = [(i, seed) for i in order for seed in range(min(settings.transfer_seeds, len(splits)))]
    tested = Parallel(n_jobs=settings.workers or -1, mmap_mode="c")(
        delayed(tested_on_seed)(
            np.asarray(cells[i].x, np.float32),
            y,
            seed,
            splits[seed],
            usable,
            cells[i].row.probe,
            settings.mlp_rank,
            cells[i].split_scores[seed][1],
            cells[i].matrix,
        )
        for i, seed in jobs
    )
    by_cell: dict[int, list] = {i: [] for i in order}
    for (i, _), result in zip(jobs, tested, strict=True):
        by_cell[i].append(result)
    for i, (row, _, _, matrix) in enumerate(cells):
        for name, metrics in summarise(by_cell[i], usable, settings.bootstrap, matrix).items():
            report[name]["cells"][row.representation] = {
                "layer": cell_layer(row),
                "probe": row.probe,
            } | metrics
    return report
