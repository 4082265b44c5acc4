from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from halp.config import ModelSettings
from halp.models.fingerprint import model_fingerprint
from halp.models.loading import load_model
from halp.models.synthetic import build_synthetic
from tests.conftest import ARCHS

QWEN_PROMPT = (
    "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>hi<|im_end|>\n<|im_start|>assistant\n"
)
# class, image placeholder token, the rendered prompt for an image and "hi"
EXPECTED = {
    "qwen2_vl": ("Qwen2VLForConditionalGeneration", "<|image_pad|>", QWEN_PROMPT),
    "qwen2_5_vl": ("Qwen2_5_VLForConditionalGeneration", "<|image_pad|>", QWEN_PROMPT),
    "mllama": (
        "MllamaForConditionalGeneration",
        "<|image|>",
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n<|image|>hi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
    ),
    "phi4mm": ("Phi4MultimodalForCausalLM", "<|image|>", "<|user|><|image|>hi<|end|><|assistant|>"),
    "llava_next": ("LlavaNextForConditionalGeneration", "<image>", "[INST] <image>\nhi [/INST]"),
    "gemma3": (
        "Gemma3ForConditionalGeneration",
        "<image_soft_token>",
        "<bos><start_of_turn>user\n<start_of_image>hi<end_of_turn>\n<start_of_turn>model\n",
    ),
    "smolvlm": (
        "SmolVLMForConditionalGeneration",
        "<image>",
        "<|im_start|>User:<image>hi<end_of_utterance>\nAssistant:",
    ),
    "fast_vlm": (
        "FastVlmForConditionalGeneration",
        "<image>",
        "<|im_start|>user\n<image>\nhi<|im_end|>\n<|im_start|>assistant\n",
    ),
    "molmo2": (
        "Molmo2ForConditionalGeneration",
        "<im_patch>",
        "<|im_start|>user\n<|image|>hi<|im_end|>\n<|im_start|>assistant\n",
    ),
}
ADDS_BOS = {"mllama", "llava_next", "gemma3"}  # like the real Llama-3, Mistral and Gemma tokenizers
# prompts that start with the BOS, rendered by the template, added by the tokenizer or written by the
# processor (Molmo2), once
BOS_FIRST = ADDS_BOS | {"smolvlm", "molmo2"}


@pytest.mark.parametrize("arch", ARCHS)
def test_tiny_model_reloads_as_the_real_classes(tiny_dir, arch):
    """Loaded back through the same path as a real checkpoint (load_model: from_pretrained + adapter)."""
    loaded = load_model(ModelSettings(model=str(tiny_dir / arch)))
    class_name, image_token, prompt = EXPECTED[arch]
    assert type(loaded.model).__name__ == class_name
    assert loaded.processor.tokenizer.padding_side == "left"
    assert loaded.processor.tokenizer.convert_tokens_to_ids(image_token) == loaded.adapter.image_token(
        loaded.model
    )
    text = loaded.processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}],
        add_generation_prompt=True,
    )
    assert text == prompt


@pytest.mark.parametrize("arch", ARCHS)
def test_prompts_are_tokenised_as_the_models_own_chat_template_does(load_tiny, mixed_batch, arch):
    """One BOS where the real model has one: the Llama-3 and Gemma templates render it and the tokenizer
    would add it again; Mistral's template leaves it to the tokenizer."""
    loaded = load_tiny(arch)
    images, questions = mixed_batch
    inputs = loaded.adapter.build_inputs(loaded.processor, images, questions)
    conversations = [
        [{"role": "user", "content": [{"type": "image", "image": im}, {"type": "text", "text": q}]}]
        for im, q in zip(images, questions, strict=True)
    ]
    own = loaded.processor.apply_chat_template(
        conversations, add_generation_prompt=True, tokenize=True, return_dict=True, padding=True
    )
    assert inputs["input_ids"].tolist() == own["input_ids"]
    tokenizer = loaded.processor.tokenizer
    if arch in ADDS_BOS:  # like the real one, the tiny tokenizer adds a BOS of its own
        assert tokenizer("hi")["input_ids"][0] == tokenizer.bos_token_id
    for ids, mask in zip(inputs["input_ids"], inputs["attention_mask"], strict=True):
        prompt = ids[mask.bool()].tolist()
        assert prompt[:2] != [tokenizer.bos_token_id] * 2
        assert (prompt[0] == tokenizer.bos_token_id) == (arch in BOS_FIRST)


def test_same_seed_same_weights(tmp_path, tiny_dir):
    build_synthetic("qwen2_5_vl", tmp_path / "again", seed=0)
    build_synthetic("qwen2_5_vl", tmp_path / "other", seed=1)
    ref = load_file(tiny_dir / "qwen2_5_vl" / "model.safetensors")
    same = load_file(tmp_path / "again" / "qwen2_5_vl" / "model.safetensors")
    other = load_file(tmp_path / "other" / "qwen2_5_vl" / "model.safetensors")
    assert ref.keys() == same.keys()
    assert all(torch.equal(ref[k], same[k]) for k in ref)
    assert not all(torch.equal(ref[k], other[k]) for k in ref)
    assert model_fingerprint(str(tiny_dir / "qwen2_5_vl"), None) != model_fingerprint(
        str(tmp_path / "other" / "qwen2_5_vl"), None
    )


def test_same_seed_same_bytes_in_every_interpreter(tmp_path):
    """A rebuild must not change a model folder's fingerprint, or every rebuild deletes its parts."""
    build = (
        "import sys; from pathlib import Path; from halp.models.synthetic import BUILDERS, build_synthetic\n"
        "for arch in BUILDERS: build_synthetic(arch, Path(sys.argv[1]), seed=0)"
    )
    for hash_seed in ("1", "2"):
        env = {"PYTHONHASHSEED": hash_seed, "HF_HUB_OFFLINE": "1", "PATH": ""}
        subprocess.run([sys.executable, "-c", build, str(tmp_path / hash_seed)], env=env, check=True)
    files = sorted(p.relative_to(tmp_path / "1") for p in (tmp_path / "1").rglob("*") if p.is_file())
    assert {p.parts[0] for p in files} == set(ARCHS)
    for name in files:
        assert (tmp_path / "1" / name).read_bytes() == (tmp_path / "2" / name).read_bytes(), name


def test_unknown_model_source_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="cannot load model"):
        load_model(ModelSettings(model=str(tmp_path / "no-such-model")))


def test_unsupported_architecture_lists_the_supported(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(
        ValueError,
        match=r"'llama' model, which halp has no adapter for.*fast_vlm, gemma3, llava_next, mllama, molmo2, ",
    ):
        load_model(ModelSettings(model=str(tmp_path)))
