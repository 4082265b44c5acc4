"""Vision-token statistics equal plain numpy on the raw rows."""

from __future__ import annotations

import numpy as np

from halp.lens.statistics import STATISTICS, image_statistics


def test_statistics_equal_numpy_on_the_raw_vectors():
    rng = np.random.default_rng(0)
    tokens = rng.normal(size=(3, 5, 8)) * np.array([1.0, 10.0, 100.0])[:, None, None]  # norms differ by layer
    tokens[2, 3, 6] = -1e4
    stats = dict(zip(STATISTICS, image_statistics(tokens.astype(np.float32)).T, strict=True))
    norms = np.linalg.norm(tokens, axis=-1)
    np.testing.assert_allclose(stats["norm_mean"], norms.mean(axis=1), rtol=1e-6)
    np.testing.assert_allclose(stats["norm_std"], norms.std(axis=1), rtol=1e-5)
    np.testing.assert_allclose(stats["norm_median"], np.median(norms, axis=1), rtol=1e-6)
    np.testing.assert_allclose(stats["norm_min"], norms.min(axis=1), rtol=1e-6)
    np.testing.assert_allclose(stats["norm_max"], norms.max(axis=1), rtol=1e-6)
    assert stats["norm_mean"][2] > 50, "raw vectors, not normalised ones"
    assert stats["max_abs_value"][2] == 1e4 and stats["max_abs_dimension"][2] == 6
    for layer in range(3):
        unit = tokens[layer] / norms[layer][:, None]
        cosines = unit @ unit.T
        expected = cosines[~np.eye(5, dtype=bool)].mean()
        np.testing.assert_allclose(stats["mean_pairwise_cosine"][layer], expected, rtol=1e-5)
    previous = [
        np.mean([np.dot(tokens[k, i], tokens[k - 1, i]) / norms[k, i] / norms[k - 1, i] for i in range(5)])
        for k in (1, 2)
    ]
    assert np.isnan(stats["cosine_to_previous_layer"][0])
    np.testing.assert_allclose(stats["cosine_to_previous_layer"][1:], previous, rtol=1e-5)
    assert (stats["non_finite"] == 0).all()


def test_non_finite_values_are_counted_and_kept_out_of_the_norms():
    tokens = np.ones((2, 3, 4), dtype=np.float32)
    tokens[1, 0, 0] = np.nan
    tokens[1, 2, 1] = np.inf
    stats = dict(zip(STATISTICS, image_statistics(tokens).T, strict=True))
    assert stats["non_finite"].tolist() == [0, 2]
    assert np.isfinite(stats["norm_mean"]).all()
