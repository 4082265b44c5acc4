"""Every image token at every layer, against a plain forward, batched and one by one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from halp.extract.engine import Extractor
from halp.models.adapter import resolve
from tests.conftest import ARCHS

DECODER_IMAGE_ARCHS = [arch for arch in ARCHS if arch != "mllama"]  # Mllama: cross-attention only
LAYERS = [0, 2, 3]
TOL = 1e-4


@pytest.fixture(scope="module", params=DECODER_IMAGE_ARCHS)
def setup(request, load_tiny, mixed_batch):
    loaded = load_tiny(request.param)
    extractor = Extractor(loaded, LAYERS, max_new_tokens=1, top_k=1)
    images, questions = mixed_batch
    batched = extractor.image_tokens(extractor.prepare(images, questions))
    singles = [extractor.prepare([im], [q]) for im, q in zip(images, questions, strict=True)]
    return loaded, extractor, batched, singles


@torch.inference_mode()
def test_every_image_position_at_every_layer_equals_a_plain_forward(setup):
    """Input = hidden_states[0] at the image positions, block k = hidden_states[k + 1], the last block
    before the final norm."""
    loaded, extractor, batched, singles = setup
    final_norm = resolve(loaded.model, loaded.adapter.final_norm)
    for i, single in enumerate(singles):
        positions = [
            j for j, t in enumerate(single["input_ids"][0].tolist()) if t == extractor.image_token_id
        ]
        assert batched[i].shape == (1 + len(LAYERS), len(positions), loaded.hidden_size)
        hidden = loaded.model(**single, output_hidden_states=True).hidden_states
        stored = torch.from_numpy(batched[i])
        torch.testing.assert_close(stored[0], hidden[0][0, positions], atol=TOL, rtol=0)
        for j, k in enumerate(LAYERS, start=1):
            if k == loaded.n_blocks - 1:
                torch.testing.assert_close(final_norm(stored[j]), hidden[-1][0, positions], atol=TOL, rtol=0)
            else:
                torch.testing.assert_close(stored[j], hidden[k + 1][0, positions], atol=TOL, rtol=0)


def test_batched_equals_one_by_one(setup):
    _, extractor, batched, singles = setup
    for i, single in enumerate(singles):
        np.testing.assert_allclose(batched[i], extractor.image_tokens(single)[0], atol=TOL, rtol=0)


@pytest.mark.parametrize("arch", ["qwen2_vl", "qwen2_5_vl"])
def test_token_count_is_the_processors_merged_grid_on_non_square_images(load_tiny, mixed_batch, arch):
    """t * h * w / merge^2 tokens per image (seed 004 counted image_grid_thw.sum())."""
    loaded = load_tiny(arch)
    extractor = Extractor(loaded, [0], max_new_tokens=1, top_k=1)
    images, questions = mixed_batch
    inputs = extractor.prepare(images, questions)
    merge = loaded.processor.image_processor.merge_size
    grids = inputs["image_grid_thw"]
    assert (grids[:, 1] != grids[:, 2]).any(), "the batch must hold a non-square image"
    expected = (grids.prod(dim=-1) // merge**2).tolist()
    assert [tokens.shape[1] for tokens in extractor.image_tokens(inputs)] == expected
