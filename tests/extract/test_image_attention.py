"""Attention to the image, computed beside sdpa, against eager attention's own weights
(`output_attentions=True`) for every architecture, batched with left padding and one sample at a time."""

from __future__ import annotations

import importlib.util
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from halp.config import ModelSettings
from halp.extract.attention import visible_bias, watching
from halp.extract.engine import Extractor
from halp.models.loading import load_model
from halp.models.registry import ADAPTERS
from halp.store.parts import IMAGE_ATTENTION
from tests.conftest import ARCHS

LAYERS = [0, 1, 2, 3]  # every block of the 4-block tiny models (Mllama's block 1 is cross-attention)
TOL = 1e-5


@contextmanager
def attention_kernel(model, name: str):
    before = model.config._attn_implementation
    model.set_attn_implementation(name)
    try:
        yield
    finally:
        model.set_attn_implementation(before)


@pytest.fixture(scope="module", params=ARCHS)
def setup(request, load_tiny, mixed_batch):
    loaded = load_tiny(request.param)
    extractor = Extractor(loaded, LAYERS, max_new_tokens=2, top_k=5, image_attention=True)
    images, questions = mixed_batch
    batched = extractor.run(extractor.prepare(images, questions))
    singles = [extractor.prepare([im], [q]) for im, q in zip(images, questions, strict=True)]
    return loaded, extractor, batched, singles


@torch.inference_mode()
def eager_reference(
    loaded, extractor: Extractor, single, vision_pos: int, query_pos: int
) -> dict[str, np.ndarray]:
    """The stored arrays recomputed from eager attention's full [heads, S, K] weights of one sample."""
    with attention_kernel(loaded.model, "eager"):
        weights = loaded.model(**single, output_attentions=True).attentions
    assert len(weights) == loaded.n_blocks
    is_image = (single["input_ids"][0] == extractor.image_token_id).float().cpu()
    out = {name: [] for name in IMAGE_ATTENTION}
    for k in LAYERS:
        for prefix, pos in (("", query_pos), ("vision_token_", vision_pos)):
            row = weights[k][0, :, pos].float().cpu()  # [heads, K]
            image = (
                is_image if row.shape[-1] == len(is_image) else torch.ones(row.shape[-1])
            )  # cross-attention
            share = (row * image).sum(-1)
            within = torch.nan_to_num(row * image / share[:, None])  # 0 / 0 where the image is out of reach
            entropy = -(within * torch.log(within.clamp_min(1e-38))).sum(-1)
            out[f"{prefix}image_attention"].append(share.numpy())
            out[f"{prefix}image_attention_entropy"].append(entropy.numpy())
    return {name: np.stack(values) for name, values in out.items()}  # [n_layers, heads]


def test_every_array_is_stored_with_one_row_per_layer_and_head(setup):
    loaded, _extractor, batched, _ = setup
    config = loaded.model.config.get_text_config()
    assert set(batched.image_attention) == set(IMAGE_ATTENTION)
    for values in batched.image_attention.values():
        assert values.shape == (3, len(LAYERS), config.num_attention_heads)
        assert np.isfinite(values).all()
    for name in ("image_attention", "vision_token_image_attention"):
        assert (batched.image_attention[name] >= 0).all() and (
            batched.image_attention[name] <= 1 + 1e-6
        ).all()


def test_gemma3_sliding_window_hides_the_image_from_the_query_token(setup):
    """Gemma-3's local layers see `sliding_window` tokens back (key k from query q when k > q - 16 in the
    tiny model): the image lies further back, so the query token puts no attention there (stored as share
    0, entropy 0); the global layers do."""
    loaded, _extractor, batched, _ = setup
    if loaded.model_type != "gemma3":
        pytest.skip("no sliding window")
    config = loaded.model.config.text_config
    local = [LAYERS.index(k) for k in LAYERS if config.layer_types[k] == "sliding_attention"]
    assert local and all((batched.query_token_pos - batched.vision_token_pos) >= config.sliding_window)
    assert (batched.image_attention["image_attention"][:, local] == 0).all()
    assert (batched.image_attention["image_attention_entropy"][:, local] == 0).all()
    assert (
        batched.image_attention["image_attention"][:, [i for i in range(len(LAYERS)) if i not in local]] > 0
    ).all()


def test_equals_eager_output_attentions_batched_and_alone(setup):
    loaded, extractor, batched, singles = setup
    for i, single in enumerate(singles):
        alone = extractor.run(single)
        expected = eager_reference(
            loaded, extractor, single, int(batched.vision_token_pos[i]), int(batched.query_token_pos[i])
        )
        for name in IMAGE_ATTENTION:
            np.testing.assert_allclose(batched.image_attention[name][i], expected[name], atol=TOL, rtol=0)
            np.testing.assert_allclose(alone.image_attention[name][0], expected[name], atol=TOL, rtol=0)


def test_the_same_under_the_eager_kernel(setup, mixed_batch):
    """Run under eager attention, the wrapper delegates to the model's own eager function: same numbers."""
    loaded, extractor, batched, _ = setup
    with attention_kernel(loaded.model, "eager"):
        eager = extractor.run(extractor.prepare(*mixed_batch))
    for name in IMAGE_ATTENTION:
        np.testing.assert_allclose(
            eager.image_attention[name], batched.image_attention[name], atol=TOL, rtol=0
        )
    assert eager.answers == batched.answers


def test_mllama_cross_attention_blocks_see_only_the_image(setup):
    loaded, _extractor, batched, _ = setup
    if loaded.adapter.cross_attention is None:
        pytest.skip("the image is tokens in this decoder")
    cross = loaded.model.config.text_config.cross_attention_layers
    for name in ("image_attention", "vision_token_image_attention"):
        shares = batched.image_attention[name]
        assert np.allclose(shares[:, [LAYERS.index(k) for k in cross]], 1.0)
        assert (shares[:, [LAYERS.index(k) for k in LAYERS if k not in cross]] < 1).all()


def test_off_by_default_and_then_nothing_is_computed(setup):
    loaded, _extractor, _batched, singles = setup
    plain = Extractor(loaded, LAYERS, max_new_tokens=2, top_k=5).run(singles[0])
    assert plain.image_attention == {}


def test_the_model_runs_its_own_kernels_again_afterwards(setup):
    """The library's kernel lookup is its own again after the run, also after an error."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

    loaded, _extractor, _batched, singles = setup
    blocks = loaded.adapter.blocks(loaded.model)
    ids = singles[0]["input_ids"]
    with (
        pytest.raises(RuntimeError, match="boom"),
        watching({0: blocks[0]}, None, torch.zeros(1, 2, dtype=torch.long), ids == 0),
    ):
        raise RuntimeError("boom")
    assert "get_interface" not in vars(ALL_ATTENTION_FUNCTIONS)
    assert ALL_ATTENTION_FUNCTIONS.get_interface.__func__ is AttentionInterface.get_interface


@pytest.mark.parametrize("window", [None, 3])
def test_flash_attention_mask_rebuilt_equals_the_sdpa_mask(window):
    """flash-attention gets a 2-D padding mask (or none) and the window as an argument: the rows rebuilt
    from them equal the 4-D mask sdpa would get, padding, causality and window included."""
    from transformers.masking_utils import (
        causal_mask_function,
        sdpa_mask,
        sliding_window_causal_mask_function,
    )

    padding = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    function = causal_mask_function if window is None else sliding_window_causal_mask_function(window)
    full = sdpa_mask(
        batch_size=2,
        q_length=7,
        kv_length=7,
        mask_function=function,
        attention_mask=padding,
        allow_is_causal_skip=False,
    )  # [2, 1, 7, 7] bool
    rows = torch.tensor([[3, 6], [0, 6]])
    expected = visible_bias(full, rows, 7, causal=True)
    for flash_mask in (padding, None):
        rebuilt = visible_bias(flash_mask, rows, 7, causal=True, sliding_window=window)
        if flash_mask is None:  # without padding: equal on the row without any
            torch.testing.assert_close(rebuilt[1], expected[1])
        else:
            torch.testing.assert_close(rebuilt, expected)


FLASH = importlib.util.find_spec("flash_attn") is not None and torch.cuda.is_available()
MODEL_TYPES = {"phi4mm": "phi4_multimodal"}  # the tiny models' names that are not their model types


@pytest.mark.skipif(not FLASH, reason="flash-attention runs on CUDA with flash-attn installed (.[gpu])")
@pytest.mark.parametrize("arch", [a for a in ARCHS if ADAPTERS[MODEL_TYPES.get(a, a)].flash_attention])
def test_under_flash_attention_equals_eager_output_attentions(arch, tiny_dir, mixed_batch):
    """On a GPU with flash-attn: the kernel gets a 2-D mask, the rows are rebuilt; bfloat16 tolerance."""
    settings = ModelSettings(
        model=str(tiny_dir / arch), dtype="bfloat16", device="cuda", attn_implementation="flash_attention_2"
    )
    loaded = load_model(settings)
    assert loaded.attn_implementation == "flash_attention_2"
    extractor = Extractor(loaded, LAYERS, max_new_tokens=2, top_k=5, image_attention=True)
    images, questions = mixed_batch
    batched = extractor.run(extractor.prepare(images, questions))
    for i, (image, question) in enumerate(zip(images, questions, strict=True)):
        single = extractor.prepare([image], [question]).to("cuda")
        positions = int(batched.vision_token_pos[i]), int(batched.query_token_pos[i])
        expected = eager_reference(loaded, extractor, single, *positions)
        for name in IMAGE_ATTENTION:
            np.testing.assert_allclose(batched.image_attention[name][i], expected[name], atol=2e-2, rtol=0)
