"""Llama-3.2-Vision (Mllama), real classes and processor, random weights: "tiny" has 28-pixel tiles and
up to 2 tiles per image; "demo" (an organism trained here) 84-pixel tiles, one demo image's width, and
two cross-attention blocks among six; "full" has the 11B checkpoint's architecture numbers."""

from __future__ import annotations

from transformers import (
    MllamaConfig,
    MllamaForConditionalGeneration,
    MllamaImageProcessor,
    MllamaProcessor,
    PreTrainedModel,
    ProcessorMixin,
)

from halp.models.synthetic.common import DEMO_DECODER, TINY_DECODER, token_settings, train_tokenizer

SPECIALS = [
    "<unk>",
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|finetune_right_pad_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|python_tag|>",
    "<|image|>",
]
# The real template's shape for one user turn with an image, without the default system turn.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}<|image|>{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
TEXT = {
    "tiny": TINY_DECODER
    | dict(
        cross_attention_layers=[1],
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    ),
    "demo": DEMO_DECODER
    | dict(
        num_hidden_layers=6,  # 4 self-attention blocks and 2 cross-attention ones, as 32 and 8 in the 11B
        cross_attention_layers=[1, 4],
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    ),
    "full": dict(  # meta-llama/Llama-3.2-11B-Vision-Instruct
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=40,
        num_attention_heads=32,
        num_key_value_heads=8,
        cross_attention_layers=[3, 8, 13, 18, 23, 28, 33, 38],
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    ),
}
# The vision output concatenates the last and the intermediate layers: vision_output_dim must be
# hidden_size * (1 + len(intermediate_layers_indices)), which the config does not check.
VISION = {
    "tiny": dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_global_layers=1,
        attention_heads=2,
        image_size=28,
        max_num_tiles=2,
        # must match the image processor's for max_image_tiles=2 (not checked either)
        supported_aspect_ratios=[[1, 1], [1, 2], [2, 1]],
        intermediate_layers_indices=[0, 1],
        vision_output_dim=32 * 3,
    ),
    "demo": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_global_layers=1,
        attention_heads=4,
        image_size=84,
        max_num_tiles=2,
        supported_aspect_ratios=[[1, 1], [1, 2], [2, 1]],
        intermediate_layers_indices=[0, 1],
        vision_output_dim=64 * 3,
    ),
    "full": dict(
        hidden_size=1280,
        intermediate_size=5120,
        num_hidden_layers=32,
        num_global_layers=8,
        attention_heads=16,
        image_size=560,
        max_num_tiles=4,
        intermediate_layers_indices=[3, 7, 15, 23, 30],
        vision_output_dim=1280 * 6,
    ),
}


def build_mllama(size: str) -> tuple[PreTrainedModel, ProcessorMixin]:
    tokenizer = train_tokenizer(
        SPECIALS,
        adds_bos=True,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<|finetune_right_pad_id|>",
    )
    vision = dict(patch_size=14) | VISION[size]
    tile = vision["image_size"]
    processor = MllamaProcessor(
        image_processor=MllamaImageProcessor(
            size={"height": tile, "width": tile}, max_image_tiles=vision["max_num_tiles"]
        ),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )
    text = token_settings(tokenizer, bos="<|begin_of_text|>", eos="<|eot_id|>") | TEXT[size]
    config = MllamaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<|image|>"),
    )
    return MllamaForConditionalGeneration(config).eval(), processor
