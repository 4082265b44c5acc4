"""FastVLM: the tiny FastViT tower must tell images apart (at transformers' init it outputs ~1e-23)."""

from __future__ import annotations

import numpy as np
import torch

from halp.extract.engine import Extractor
from tests.conftest import random_image


@torch.inference_mode()
def test_different_images_give_different_vision_features(load_tiny):
    extractor = Extractor(load_tiny("fast_vlm"), [0], max_new_tokens=1, top_k=1)
    images = [random_image(90, 90, 0), random_image(90, 90, 1)]
    out = extractor.run(extractor.prepare(images, ["what color?"] * 2))
    scale = np.abs(out.vision_only).mean()
    assert scale > 1e-3
    assert np.abs(out.vision_only[0] - out.vision_only[1]).mean() > 0.1 * scale
