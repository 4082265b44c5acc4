"""Phi-4-multimodal: the adapter's repairs of transformers 5.23 bugs, each shown failing without them."""

from __future__ import annotations

import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoProcessor

from halp.config import ModelSettings
from halp.models.adapter import resolve
from halp.models.loading import load_model
from halp.models.phi4mm import PHI4MM_VISION
from tests.conftest import random_image


@pytest.fixture(scope="module")
def folder(tiny_dir):
    return tiny_dir / "phi4mm"


@pytest.fixture(scope="module")
def repaired(load_tiny):
    return load_tiny("phi4mm")


@pytest.fixture(scope="module")
def inputs(repaired):
    return repaired.adapter.build_inputs(repaired.processor, [random_image(90, 90, 0)], ["what color?"])


def test_chat_template_is_reattached(folder, repaired):
    assert AutoProcessor.from_pretrained(folder).chat_template is None  # the library bug
    assert repaired.processor.chat_template == (folder / "chat_template.jinja").read_text()


@torch.inference_mode()
def test_hidden_states_after_an_image_forward(folder, repaired, inputs):
    plain = AutoModelForCausalLM.from_pretrained(folder).eval()
    plain(**inputs)
    with pytest.raises(AttributeError, match="NoneType"):  # the library bug: capture hooks installed twice
        plain(**inputs, output_hidden_states=True)
    repaired.model(**inputs)
    hidden = repaired.model(**inputs, output_hidden_states=True).hidden_states
    assert len(hidden) == repaired.n_blocks + 1


@torch.inference_mode()
def test_siglip_attends_both_ways_whatever_the_batch(folder, repaired):
    """A crop's features must not depend on whether another crop in the batch has padded patches."""
    pixels = torch.randn(2, 3, 448, 448)
    full = torch.ones(2, 32, 32, dtype=torch.bool)
    padded = full.clone()
    padded[1, :, 16:] = False

    def first_crop_features(model) -> tuple[torch.Tensor, torch.Tensor]:
        encoder = resolve(model, PHI4MM_VISION)
        alone = encoder(pixels, patch_attention_mask=full, output_hidden_states=True).hidden_states[-2][0]
        mixed = encoder(pixels, patch_attention_mask=padded, output_hidden_states=True).hidden_states[-2][0]
        return alone, mixed

    alone, mixed = first_crop_features(AutoModelForCausalLM.from_pretrained(folder).eval())
    assert not torch.allclose(alone, mixed, atol=1e-3)  # the library bug: causal without a mask
    alone, mixed = first_crop_features(repaired.model)
    torch.testing.assert_close(alone, mixed, atol=1e-4, rtol=0)


@torch.inference_mode()
def test_vision_lora_is_loaded_and_active_when_present(folder, repaired, inputs, tmp_path):
    assert repaired.model.active_adapters() == ["vision"]
    with_lora = repaired.model(**inputs).logits
    without = shutil.copytree(folder, tmp_path / "no-lora", ignore=shutil.ignore_patterns("vision-lora"))
    base = load_model(ModelSettings(model=str(without)))
    assert not getattr(base.model, "_hf_peft_config_loaded", False)
    assert not torch.allclose(base.model(**inputs).logits, with_lora, atol=1e-3)
