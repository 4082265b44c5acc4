"""Phi-4-multimodal, real classes and processor, random weights and a random vision LoRA: "tiny" for
CPU tests, "full" with the real checkpoint's architecture numbers."""

from __future__ import annotations

from pathlib import Path

from peft import LoraConfig, get_peft_model
from transformers import (
    Phi4MultimodalConfig,
    Phi4MultimodalFeatureExtractor,
    Phi4MultimodalForCausalLM,
    Phi4MultimodalImageProcessor,
    Phi4MultimodalProcessor,
    PreTrainedModel,
    ProcessorMixin,
)

from halp.models.synthetic.common import TINY_DECODER, token_settings, train_tokenizer

SPECIALS = [
    "<unk>",
    "<|endoftext|>",
    "<|user|>",
    "<|assistant|>",
    "<|system|>",
    "<|end|>",
    "<|image|>",
    "<|audio|>",
]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{% if message['content'] is string %}"
    "{{ message['content'] }}{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}<|image|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
CROP = 448  # the image processor hard-codes 256 + 16 global-image tokens, which only a 448 crop gives
# The real vision-lora's targets, as one pattern: peft saves a list of them in set order, which changes
# with every interpreter's hash seed, so each build would write another adapter_config.json.
LORA_TARGETS = r".*\.(qkv_proj|o_proj|gate_up_proj|down_proj)"
ROPE = {"rope_type": "default", "rope_theta": 10000.0}

TEXT = {
    "tiny": TINY_DECODER
    | dict(
        original_max_position_embeddings=4096,
        rope_parameters=ROPE | {"partial_rotary_factor": 1.0},
    ),
    "full": dict(  # microsoft/Phi-4-multimodal-instruct (Phi-4-mini inside)
        vocab_size=200064,
        hidden_size=3072,
        intermediate_size=8192,
        num_hidden_layers=32,
        num_attention_heads=24,
        num_key_value_heads=8,
        max_position_embeddings=131072,
        original_max_position_embeddings=4096,
        tie_word_embeddings=True,
        rope_parameters=ROPE | {"partial_rotary_factor": 0.75},
    ),
}
VISION = {  # SigLIP
    "tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2),
    "full": dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16),
}
AUDIO = {
    "tiny": dict(
        hidden_size=32,
        intermediate_size=64,
        num_blocks=1,
        num_attention_heads=2,
        ext_pw_out_channel=32,
        depthwise_separable_out_channel=32,
        nemo_conv_channels=32,
    ),
    "full": dict(
        hidden_size=1024,
        intermediate_size=1536,
        num_blocks=24,
        num_attention_heads=16,
        ext_pw_out_channel=1024,
        depthwise_separable_out_channel=1024,
        nemo_conv_channels=1024,
    ),
}
MAX_CROPS = {"tiny": 2, "full": 36}
LORA_RANK = {"tiny": 4, "full": 256}  # the real vision LoRA: r=256, alpha=512


def build_phi4mm(size: str) -> tuple[PreTrainedModel, ProcessorMixin]:
    tokenizer = train_tokenizer(
        SPECIALS,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        extra_special_tokens={"image_token": "<|image|>", "audio_token": "<|audio|>"},
    )
    image_processor = Phi4MultimodalImageProcessor(
        size={"height": CROP, "width": CROP}, patch_size=14, dynamic_hd=MAX_CROPS[size]
    )
    processor = Phi4MultimodalProcessor(
        image_processor=image_processor,
        audio_processor=Phi4MultimodalFeatureExtractor(),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )
    text = token_settings(tokenizer, bos="<|endoftext|>", eos=["<|end|>", "<|endoftext|>"]) | TEXT[size]
    config = Phi4MultimodalConfig(
        **text,
        vision_config=VISION[size]
        | dict(image_size=CROP, patch_size=14, crop_size=CROP, image_token_id=tokenizer.image_token_id),
        audio_config=AUDIO[size]
        | dict(input_size=80, time_reduction=8, audio_token_id=tokenizer.audio_token_id),
    )
    return Phi4MultimodalForCausalLM(config).eval(), processor


def _vision_lora(size: str) -> LoraConfig:
    """Random (not zero) LoRA weights on the language model, so the adapter visibly changes the outputs."""
    rank = LORA_RANK[size]
    return LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=LORA_TARGETS, init_lora_weights=False)


def save_vision_lora(model: PreTrainedModel, folder: Path, size: str) -> None:
    """The vision LoRA saved where the real checkpoint keeps its own. The caller seeds torch."""
    get_peft_model(model, _vision_lora(size)).save_pretrained(folder / "vision-lora")


def attach_vision_lora(model: PreTrainedModel, size: str) -> None:
    """The vision LoRA added to a model used in memory (the adapter's `after_load` activates it, as after
    loading). The caller seeds torch."""
    model.add_adapter(_vision_lora(size), adapter_name="vision")
