"""Tiny Qwen2-VL and Qwen2.5-VL: the library's real classes and processors, random weights, tiny widths."""

from __future__ import annotations

from transformers import (
    PreTrainedModel,
    ProcessorMixin,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
)

from halp.models.tiny.tokenizer import train_tokenizer

SPECIALS = [
    "<unk>",
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
# The real Qwen template, minus the default system turn and video branches.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
PATCH = 14


def _text_config(tokenizer) -> dict:
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def build_tiny_qwen(arch: str) -> tuple[PreTrainedModel, ProcessorMixin]:
    """arch is "qwen2_vl" or "qwen2_5_vl"; the caller seeds torch."""
    tokenizer = train_tokenizer(SPECIALS, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    token_ids = {
        "image_token_id": tokenizer.convert_tokens_to_ids("<|image_pad|>"),
        "video_token_id": tokenizer.convert_tokens_to_ids("<|video_pad|>"),
        "vision_start_token_id": tokenizer.convert_tokens_to_ids("<|vision_start|>"),
        "vision_end_token_id": tokenizer.convert_tokens_to_ids("<|vision_end|>"),
    }
    # Small pixel budget: 4x4 to 8x8 patches per image, 4 to 16 image tokens after the 2x2 merge.
    image_processor = Qwen2VLImageProcessor(
        min_pixels=4 * PATCH * PATCH * 4, max_pixels=16 * PATCH * PATCH * 4
    )
    vision = dict(patch_size=PATCH, spatial_merge_size=2, temporal_patch_size=2, in_channels=3, num_heads=2)
    if arch == "qwen2_vl":
        config = Qwen2VLConfig(
            text_config=_text_config(tokenizer),
            vision_config=dict(depth=2, embed_dim=32, hidden_size=64, mlp_ratio=2, **vision),
            **token_ids,
        )
        model, processor_class = Qwen2VLForConditionalGeneration(config), Qwen2VLProcessor
    else:
        config = Qwen2_5_VLConfig(
            text_config=_text_config(tokenizer),
            vision_config=dict(
                depth=2,
                hidden_size=32,
                intermediate_size=64,
                out_hidden_size=64,
                window_size=56,
                fullatt_block_indexes=[1],
                **vision,
            ),
            **token_ids,
        )
        model, processor_class = Qwen2_5_VLForConditionalGeneration(config), Qwen2_5_VLProcessor
    processor = processor_class(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=CHAT_TEMPLATE,
    )
    return model.eval(), processor
