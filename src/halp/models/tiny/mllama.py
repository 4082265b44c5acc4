"""Tiny Llama-3.2-Vision (Mllama): real classes and processor, 28-pixel tiles, up to 2 tiles per image."""

from __future__ import annotations

from transformers import (
    MllamaConfig,
    MllamaForConditionalGeneration,
    MllamaImageProcessor,
    MllamaProcessor,
    PreTrainedModel,
    ProcessorMixin,
)

from halp.models.tiny.tokenizer import train_tokenizer

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
TILE, MAX_TILES, VISION_WIDTH = 28, 2, 32
INTERMEDIATE = [0, 1]


def build_tiny_mllama() -> tuple[PreTrainedModel, ProcessorMixin]:
    tokenizer = train_tokenizer(
        SPECIALS, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", pad_token="<|finetune_right_pad_id|>"
    )
    processor = MllamaProcessor(
        image_processor=MllamaImageProcessor(size={"height": TILE, "width": TILE}, max_image_tiles=MAX_TILES),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )
    config = MllamaConfig(
        vision_config=dict(
            hidden_size=VISION_WIDTH,
            intermediate_size=64,
            num_hidden_layers=2,
            num_global_layers=1,
            attention_heads=2,
            image_size=TILE,
            patch_size=14,
            max_num_tiles=MAX_TILES,
            # must match the image processor's for max_image_tiles=2 (the config does not check)
            supported_aspect_ratios=[[1, 1], [1, 2], [2, 1]],
            intermediate_layers_indices=INTERMEDIATE,
            # the vision output concatenates the last and the intermediate layers (not checked either)
            vision_output_dim=VISION_WIDTH * (1 + len(INTERMEDIATE)),
        ),
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            cross_attention_layers=[1],
            max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        image_token_index=tokenizer.convert_tokens_to_ids("<|image|>"),
    )
    return MllamaForConditionalGeneration(config).eval(), processor
