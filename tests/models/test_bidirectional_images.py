"""Gemma-3 and Molmo2: image tokens attend each other both ways (a mask flash-attention-2 would drop);
Gemma-3's tiny projector must let the image reach the LM."""

from __future__ import annotations

import pytest
import torch

from halp.config import ConfigError
from halp.extract.engine import Extractor
from halp.models.adapter import resolve
from halp.models.loading import pick_attention
from halp.models.registry import ADAPTERS
from tests.conftest import random_image


@torch.inference_mode()
def test_the_image_reaches_the_language_model(load_tiny):
    """The projector starts at zero in transformers' init, which would make every image look the same."""
    extractor = Extractor(load_tiny("gemma3"), [0], max_new_tokens=1, top_k=1)
    images = [random_image(90, 90, 0), random_image(90, 90, 1)]
    out = extractor.run(extractor.prepare(images, ["what color?"] * 2))
    assert abs(out.vision_token[0, 0] - out.vision_token[1, 0]).max() > 1e-2


@pytest.mark.parametrize(("arch", "types"), [("gemma3", "token_type_ids"), ("molmo2", "mm_token_type_ids")])
@torch.inference_mode()
def test_image_tokens_attend_each_other_both_ways(load_tiny, arch, types):
    """The processor's token types reach the model: without them block 0 is causal over the image."""
    loaded = load_tiny(arch)
    extractor = Extractor(loaded, [0], max_new_tokens=1, top_k=1)
    inputs = extractor.prepare([random_image(90, 90, 0)], ["what color?"])
    out = extractor.run(inputs)
    block = resolve(loaded.model, loaded.adapter.decoder_blocks)[0]
    seen = []
    handle = block.register_forward_hook(
        lambda m, a, out: seen.append(out[0] if isinstance(out, tuple) else out)
    )
    try:
        loaded.model(**inputs)
        causal = {k: v for k, v in inputs.items() if k != types}
        loaded.model(**causal)
    finally:
        handle.remove()
    last_image = int(out.vision_token_pos[0])
    torch.testing.assert_close(
        torch.from_numpy(out.vision_token[0, 0]), seen[0][0, last_image], atol=1e-5, rtol=0
    )
    first_image = int((inputs["input_ids"][0] == loaded.adapter.image_token(loaded.model)).nonzero()[0])
    assert (seen[0][0, first_image] - seen[1][0, first_image]).abs().max() > 1e-3


@pytest.mark.parametrize("arch", ["gemma3", "molmo2"])
def test_flash_attention_is_refused_and_never_picked(monkeypatch, arch):
    bidirectional, qwen = ADAPTERS[arch], ADAPTERS["qwen2_vl"]
    with pytest.raises(ConfigError, match=r"flash_attention_2 would drop .* use auto, sdpa or eager"):
        pick_attention("flash_attention_2", torch.device("cpu"), bidirectional)
    monkeypatch.setattr("importlib.util.find_spec", lambda name: object())  # as if flash-attn were installed
    cuda = torch.device("cuda")
    assert pick_attention("auto", cuda, qwen) == "flash_attention_2"
    assert pick_attention("auto", cuda, bidirectional) == "sdpa"
