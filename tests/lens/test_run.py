"""`halp vision-tokens` as a user runs it: one row per image, statistics of the stored raw rows, metrics,
resume and staleness as in extraction, a clear refusal for a cross-attention model."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from halp.config import ConfigError, ModelSettings, load_params
from halp.data.images import load_image
from halp.extract.engine import Extractor
from halp.lens.run import vision_tokens
from halp.lens.statistics import STATISTICS, image_statistics
from halp.models.loading import load_model
from halp.store import open_vision_tokens
from tests.conftest import halp, set_params

MODEL = "qwen2_vl"


@pytest.fixture()
def extracted(workspace):
    set_params(workspace, {"lens": {"models": [MODEL], "layers": [0, -1], "save_tensors": True}})
    halp("vision-tokens", "--model", MODEL, cwd=workspace)
    return workspace, open_vision_tokens(workspace / "data/vision_tokens" / MODEL)


def test_one_row_per_image_with_every_token_and_its_statistics(extracted):
    workspace, tokens = extracted
    samples = pd.read_csv(workspace / "sampled/samples.csv", dtype=str, keep_default_na=False)
    assert list(tokens.meta.image_id) == list(dict.fromkeys(samples.image_name))  # sampled order, once each
    assert len(tokens.parts) > 1 and tokens.layers == [0, 3] and tokens.layer_names == ["input", "0", "3"]
    statistics = tokens.statistics()
    loaded = load_model(ModelSettings(model=load_params(workspace / "params.yaml").models[MODEL].model))
    extractor = Extractor(loaded, [0, 3], max_new_tokens=1, top_k=1)
    for row in tokens.meta.itertuples():
        stored = tokens.tokens(row.image_id)  # [3, n, H], raw float32
        assert stored.shape[1] == row.n_image_tokens == row.grid_t * row.grid_h * row.grid_w
        image = load_image(str(workspace / "demo/images" / row.image_id))
        again = extractor.image_tokens(extractor.prepare([image], [row.question]))[0]
        np.testing.assert_allclose(stored, again, atol=1e-4, rtol=0)
        mine = statistics[statistics.image_id == row.image_id][list(STATISTICS)].to_numpy()
        np.testing.assert_allclose(mine, image_statistics(stored), rtol=1e-6, equal_nan=True)


def test_metrics_hold_each_statistics_mean_over_images_per_layer(extracted):
    workspace, tokens = extracted
    metrics = json.loads((workspace / "metrics/vision_tokens" / f"{MODEL}.json").read_text())
    assert metrics["n_images"] == len(tokens.meta) and list(metrics["layers"]) == ["input", "0", "3"]
    means = tokens.statistics().groupby("layer").norm_mean.mean()
    for layer, values in metrics["layers"].items():
        assert values["norm_mean"] == pytest.approx(means[layer])
    plot = pd.read_csv(workspace / "reports/vision_tokens" / f"{MODEL}.csv")
    assert list(plot.layer) == [-1, 0, 3] and "norm_median" in plot  # -1: the LM's input, on a numeric axis


def test_a_lost_part_is_extracted_again_and_other_layers_replace_stale_parts(extracted):
    workspace, tokens = extracted
    before = tokens.statistics()
    tokens.parts[0].unlink()
    again = halp("vision-tokens", "--model", MODEL, cwd=workspace)
    assert "already done" in again.stderr
    pd.testing.assert_frame_equal(open_vision_tokens(tokens.folder).statistics(), before)

    set_params(workspace, {"lens.layers": [1], "lens.save_tensors": False})
    changed = halp("vision-tokens", "--model", MODEL, cwd=workspace)
    assert "extracted with another configuration" in changed.stderr
    now = open_vision_tokens(tokens.folder)
    assert now.layer_names == ["input", "1"] and len(now.meta) == len(tokens.meta)
    with pytest.raises(KeyError, match="statistics only"):
        now.tokens(now.meta.image_id[0])


def test_a_cross_attention_model_is_refused_with_the_reason(workspace, tiny_dir):
    set_params(workspace, {"models.mllama": {"model": str(tiny_dir / "mllama")}})
    params = load_params(workspace / "params.yaml")
    with pytest.raises(ConfigError, match=r"cross-attention layers, not as tokens.*lens.models"):
        vision_tokens(params, "mllama")
