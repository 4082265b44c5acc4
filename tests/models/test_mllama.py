"""Mllama: the vision-only representation masks padding tiles, unlike the seed script's mean."""

from __future__ import annotations

import torch

from halp.extract.engine import Extractor
from tests.conftest import random_image


@torch.inference_mode()
def test_padding_tiles_are_left_out_of_vision_only(load_tiny):
    loaded = load_tiny("mllama")
    extractor = Extractor(loaded, [0], max_new_tokens=1, top_k=1)
    images = [random_image(90, 90, 0), random_image(60, 150, 1)]  # 1 real tile, 2 real tiles
    inputs = extractor.prepare(images, ["what color?", "is it red?"])
    assert inputs["aspect_ratio_mask"][:, 0].tolist() == [[1, 0], [1, 1]]
    ours = torch.from_numpy(extractor.run(inputs).vision_only[0])

    out = loaded.model.model.vision_model(
        pixel_values=inputs["pixel_values"],
        aspect_ratio_ids=inputs["aspect_ratio_ids"],
        aspect_ratio_mask=inputs["aspect_ratio_mask"],
    ).last_hidden_state
    seed_style = out[0].reshape(-1, out.shape[-1]).mean(dim=0)  # the seed: every tile, padding included
    real_tile_patches = out[0, 0, 0, 1:].mean(dim=0)
    torch.testing.assert_close(ours, real_tile_patches, atol=1e-4, rtol=0)
    assert (ours - seed_style).abs().max() > 1e-2
