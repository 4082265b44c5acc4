"""Qwen2-VL and Qwen2.5-VL with the library's real classes and processors, random weights.

"tiny" runs the tests and the default pipeline on a CPU; "full" has the real 7B checkpoints'
architecture numbers (Qwen/Qwen2-VL-7B-Instruct, Qwen/Qwen2.5-VL-7B-Instruct), for GPU benchmarks.
"""

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

from halp.models.synthetic.common import DEMO_DECODER, TINY_DECODER, token_settings, train_tokenizer

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
TOKEN = 28 * 28  # pixels per image token after the 2x2 merge of 14-pixel patches

TEXT = {
    "tiny": TINY_DECODER
    | dict(
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
    ),
    "demo": DEMO_DECODER
    | dict(rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 6, 6]}),
    "full": dict(  # identical for both 7B checkpoints
        vocab_size=152064,
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        max_position_embeddings=128000,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
    ),
}
SHARED_VISION = dict(patch_size=14, spatial_merge_size=2, temporal_patch_size=2, in_channels=3)
VISION = {
    ("qwen2_vl", "tiny"): dict(depth=2, embed_dim=32, hidden_size=64, mlp_ratio=2, num_heads=2),
    ("qwen2_vl", "demo"): dict(depth=2, embed_dim=64, hidden_size=128, mlp_ratio=2, num_heads=4),
    ("qwen2_vl", "full"): dict(depth=32, embed_dim=1280, hidden_size=3584, mlp_ratio=4, num_heads=16),
    ("qwen2_5_vl", "tiny"): dict(
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        out_hidden_size=64,
        window_size=56,  # 2x2 merged tokens per window, so tiny images still span several windows
        fullatt_block_indexes=[1],
    ),
    ("qwen2_5_vl", "full"): dict(
        depth=32,
        hidden_size=1280,
        intermediate_size=3420,
        num_heads=16,
        out_hidden_size=3584,
        window_size=112,
        fullatt_block_indexes=[7, 15, 23, 31],
    ),
}
# tiny: 2x2 to 4x4 image tokens per image; full: the real processors' defaults.
PIXELS = {
    "tiny": dict(min_pixels=4 * TOKEN, max_pixels=16 * TOKEN),
    "demo": dict(min_pixels=4 * TOKEN, max_pixels=16 * TOKEN),
    "full": dict(min_pixels=4 * TOKEN, max_pixels=1280 * TOKEN),
}
CLASSES = {
    "qwen2_vl": (Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor),
    "qwen2_5_vl": (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor),
}


def build_qwen(arch: str, size: str) -> tuple[PreTrainedModel, ProcessorMixin]:
    """arch is "qwen2_vl" or "qwen2_5_vl"; the caller seeds torch."""
    tokenizer = train_tokenizer(SPECIALS, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    config_class, model_class, processor_class = CLASSES[arch]
    text = token_settings(tokenizer, bos="<|endoftext|>", eos="<|im_end|>") | TEXT[size]
    config = config_class(
        text_config=text,
        vision_config=SHARED_VISION | VISION[arch, size],
        image_token_id=tokenizer.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tokenizer.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tokenizer.convert_tokens_to_ids("<|vision_end|>"),
    )
    processor = processor_class(
        image_processor=Qwen2VLImageProcessor(**PIXELS[size]),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=CHAT_TEMPLATE,
    )
    return model_class(config).eval(), processor
