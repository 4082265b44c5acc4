"""Per-image statistics of the vision tokens at each layer, on the raw vectors (never normalised first:
seed 004 normalised before measuring, so its "mean norm" was always 1)."""

from __future__ import annotations

import numpy as np

STATISTICS = (
    "norm_mean",
    "norm_std",
    "norm_min",
    "norm_median",
    "norm_max",
    "max_abs_value",  # the largest |value| over tokens and dimensions
    "max_abs_dimension",  # the dimension it lies in
    "mean_pairwise_cosine",  # over distinct token pairs
    "cosine_to_previous_layer",  # the same token's vector one layer down (NaN for the first layer)
    "non_finite",  # values that are NaN or infinite
)


def image_statistics(tokens: np.ndarray) -> np.ndarray:
    """[n_layers, n_tokens, H] raw vectors of one image -> [n_layers, len(STATISTICS)] in float64."""
    x = tokens.astype(np.float64)
    n_layers, n_tokens, _ = x.shape
    finite = np.isfinite(x)
    x = np.where(finite, x, 0.0)  # statistics of what is finite; the count says how much was not
    norms = np.linalg.norm(x, axis=-1)  # [L, n]
    unit = x / np.maximum(norms, 1e-12)[..., None]
    summed = unit.sum(axis=1)  # [L, H]: sum_i sum_j cos(i, j) = |sum_i u_i|^2, self-pairs are n
    pairs = n_tokens * (n_tokens - 1)
    pairwise = ((summed**2).sum(axis=-1) - n_tokens) / pairs if pairs else np.full(n_layers, np.nan)
    to_previous = np.full(n_layers, np.nan)
    to_previous[1:] = (unit[1:] * unit[:-1]).sum(axis=-1).mean(axis=-1)
    flat = np.abs(x).reshape(n_layers, -1)
    largest = flat.argmax(axis=-1)
    return np.stack(
        [
            norms.mean(axis=1),
            norms.std(axis=1),
            norms.min(axis=1),
            np.median(norms, axis=1),
            norms.max(axis=1),
            flat[np.arange(n_layers), largest],
            largest % x.shape[-1],
            pairwise,
            to_previous,
            (~finite).sum(axis=(1, 2)),
        ],
        axis=1,
    )
