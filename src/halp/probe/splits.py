"""Train/validation/test splits grouped by image: no image is ever on both sides of a split."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

N_FOLDS = 5  # one fold tests, one validates, three train: 60/20/20

Split = tuple[np.ndarray, np.ndarray, np.ndarray]  # train, validation, test row indices


class DegenerateLabels(ValueError):
    """The labels cannot support a probe (one class, too few positives or images)."""


def grouped_splits(labels: np.ndarray, groups: np.ndarray, n: int) -> list[Split]:
    """n (train, validation, test) splits, stratified by label and grouped by image: repeated grouped
    5-fold cross-validation. Split s tests fold s % 5 and validates on the next fold of the shuffle seeded
    s // 5, so the first five test every sample exactly once (and one fold assignment serves all five:
    StratifiedGroupKFold takes a second per call on 3,000 images)."""
    splits = []
    for s in range(n):
        if s % N_FOLDS == 0:
            folds = StratifiedGroupKFold(n_splits=N_FOLDS, shuffle=True, random_state=s // N_FOLDS)
            parts = [test for _, test in folds.split(np.zeros(len(labels)), labels, groups)]
        k = s % N_FOLDS
        test, val = parts[k], parts[(k + 1) % N_FOLDS]
        train = np.sort(np.concatenate([parts[(k + j) % N_FOLDS] for j in range(2, N_FOLDS)]))
        for name, rows in (("train", train), ("validation", val), ("test", test)):
            if len(np.unique(labels[rows])) < 2:
                raise DegenerateLabels(
                    f"the {name} split of seed {s} holds one class only: {len(labels)} samples, "
                    f"{int(labels.sum())} hallucinated, {len(np.unique(groups))} images; label more samples"
                )
        splits.append((train, val, test))
    return splits


def check_labels(labels: np.ndarray, groups: np.ndarray, min_per_class: int = N_FOLDS) -> None:
    positives, negatives = int(labels.sum()), int((1 - labels).sum())
    if min(positives, negatives) < min_per_class or len(np.unique(groups)) < N_FOLDS:
        raise DegenerateLabels(
            f"{positives} hallucinated and {negatives} correct answers over {len(np.unique(groups))} images: "
            f"a grouped {N_FOLDS}-fold split needs at least {min_per_class} of each and {N_FOLDS} images"
        )
