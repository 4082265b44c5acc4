"""LLaVA-NeXT (v1.6, Mistral-7B), real classes and processor, random weights: "tiny" has 56-pixel tiles
(4x4 CLIP patches, so unpadding a wide image's grid drops whole rows) and anyres grids up to 2x2 tiles;
"full" has llava-v1.6-mistral-7b's numbers."""

from __future__ import annotations

from transformers import (
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessor,
    LlavaNextProcessor,
    PreTrainedModel,
    ProcessorMixin,
)

from halp.models.synthetic.common import TINY_DECODER, token_settings, train_tokenizer

SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
# The real template's shape for a user turn with an image (Mistral's [INST] ... [/INST]); the tokenizer
# adds the BOS, as Mistral's does.
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}[INST] {% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}<image>\n{% endif %}{% endfor %}{% for c in message['content'] %}"
    "{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %} [/INST]"
    "{% else %}{{ message['content'][0]['text'] }}{{ eos_token }}{% endif %}{% endfor %}"
)
TEXT = {
    "tiny": TINY_DECODER | dict(model_type="mistral", sliding_window=None),
    "full": dict(  # mistralai/Mistral-7B-Instruct-v0.2 inside llava-hf/llava-v1.6-mistral-7b-hf
        model_type="mistral",
        vocab_size=32064,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=32768,
        rms_norm_eps=1e-5,
        sliding_window=None,
        tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
    ),
}
VISION = {  # CLIP; the model feeds the projector the second-to-last layer, CLS dropped
    "tiny": dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, image_size=56
    ),
    "full": dict(  # openai/clip-vit-large-patch14-336
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=336,
        projection_dim=768,
    ),
}
GRIDS = {  # anyres resolutions (height, width) an image may be tiled into, besides its base tile
    "tiny": [[56, 112], [112, 56], [112, 112]],
    "full": [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
}


def build_llava_next(size: str) -> tuple[PreTrainedModel, ProcessorMixin]:
    tokenizer = train_tokenizer(SPECIALS, adds_bos=True, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    vision = dict(model_type="clip_vision_model", patch_size=14) | VISION[size]
    tile = vision["image_size"]
    processor = LlavaNextProcessor(
        image_processor=LlavaNextImageProcessor(
            size={"shortest_edge": tile},
            crop_size={"height": tile, "width": tile},
            image_grid_pinpoints=GRIDS[size],
        ),
        tokenizer=tokenizer,
        patch_size=vision["patch_size"],
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # the CLS position, which "default" then drops
        chat_template=CHAT_TEMPLATE,
    )
    config = LlavaNextConfig(
        vision_config=vision,
        text_config=token_settings(tokenizer, bos="<s>", eos="</s>") | TEXT[size],
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=GRIDS[size],
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )
    return LlavaNextForConditionalGeneration(config).eval(), processor
