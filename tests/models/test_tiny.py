from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor

from halp.config import ModelSettings
from halp.models.loading import load_model, model_fingerprint
from halp.models.tiny import build_tiny
from tests.conftest import QWEN_ARCHS

EXPECTED_CLASSES = {
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
}


@pytest.mark.parametrize("arch", QWEN_ARCHS)
def test_tiny_model_reloads_as_the_real_classes(tiny_dir, arch):
    model = AutoModelForImageTextToText.from_pretrained(tiny_dir / arch)
    processor = AutoProcessor.from_pretrained(tiny_dir / arch)
    assert type(model).__name__ == EXPECTED_CLASSES[arch]
    assert processor.tokenizer.padding_side == "left"
    assert processor.tokenizer.convert_tokens_to_ids("<|image_pad|>") == model.config.image_token_id
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}],
        add_generation_prompt=True,
    )
    assert text.startswith("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>hi<|im_end|>")
    assert text.endswith("<|im_start|>assistant\n")


def test_same_seed_same_weights(tmp_path, tiny_dir):
    build_tiny("qwen2_5_vl", tmp_path / "again", seed=0)
    build_tiny("qwen2_5_vl", tmp_path / "other", seed=1)
    ref = load_file(tiny_dir / "qwen2_5_vl" / "model.safetensors")
    same = load_file(tmp_path / "again" / "qwen2_5_vl" / "model.safetensors")
    other = load_file(tmp_path / "other" / "qwen2_5_vl" / "model.safetensors")
    assert ref.keys() == same.keys()
    assert all(torch.equal(ref[k], same[k]) for k in ref)
    assert not all(torch.equal(ref[k], other[k]) for k in ref)
    assert model_fingerprint(str(tiny_dir / "qwen2_5_vl"), None) != model_fingerprint(
        str(tmp_path / "other" / "qwen2_5_vl"), None
    )


def test_unknown_model_source_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="cannot load model"):
        load_model(ModelSettings(model=str(tmp_path / "no-such-model")))


def test_unsupported_architecture_lists_the_supported(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(
        ValueError, match=r"'llama' model, which halp has no adapter for.*qwen2_5_vl, qwen2_vl"
    ):
        load_model(ModelSettings(model=str(tmp_path)))
