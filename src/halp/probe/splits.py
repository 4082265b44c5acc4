"""Train/validation/test splits grouped by image: no image is ever on both sides of a split."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

N_FOLDS = 5  # one fold tests, one validates, three train: 60/20/20


class DegenerateLabels(ValueError):
    """The labels cannot support a probe (one class, too few positives or images)."""


def grouped_split(
    labels: np.ndarray, groups: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, validation, test) row indices, stratified by label, grouped by image, seeded."""
    folds = StratifiedGroupKFold(n_splits=N_FOLDS, shuffle=True, random_state=seed)
    parts = [test for _, test in folds.split(np.zeros(len(labels)), labels, groups)]
    test, val, train = parts[0], parts[1], np.concatenate(parts[2:])
    for name, rows in (("train", train), ("validation", val), ("test", test)):
        if len(np.unique(labels[rows])) < 2:
            raise DegenerateLabels(
                f"the {name} split of seed {seed} holds one class only: {len(labels)} samples, "
                f"{int(labels.sum())} hallucinated, {len(np.unique(groups))} images; label more samples"
            )
    return train, val, test


def check_labels(labels: np.ndarray, groups: np.ndarray, min_per_class: int = N_FOLDS) -> None:
    positives, negatives = int(labels.sum()), int((1 - labels).sum())
    if min(positives, negatives) < min_per_class or len(np.unique(groups)) < N_FOLDS:
        raise DegenerateLabels(
            f"{positives} hallucinated and {negatives} correct answers over {len(np.unique(groups))} images: "
            f"a grouped {N_FOLDS}-fold split needs at least {min_per_class} of each and {N_FOLDS} images"
        )
