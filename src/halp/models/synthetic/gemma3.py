"""Gemma-3, real classes and processor, random weights: "tiny" has 56-pixel images (4x4 SigLIP patches
pooled to 2x2 image tokens) and a sliding window shorter than a prompt; "demo" (an organism trained here)
84-pixel images pooled to 3x3 tokens, one per 28-pixel cell of a square demo image, and a window that
holds a question's prompt, as gemma-3's 1024 holds its 256 image tokens; "full" has gemma-3-12b-it's."""

from __future__ import annotations

import torch
from transformers import (
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3ImageProcessor,
    Gemma3Processor,
    PreTrainedModel,
    ProcessorMixin,
)

from halp.models.synthetic.common import DEMO_DECODER, TINY_DECODER, token_settings, train_tokenizer

SPECIALS = [
    "<unk>",
    "<pad>",
    "<eos>",
    "<bos>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<start_of_image>",
    "<end_of_image>",
    "<image_soft_token>",
]
# The real template's shape (it renders the BOS itself; the tokenizer would add another): the
# assistant's role is "model", and an image is written as <start_of_image>, which the processor expands.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<start_of_turn>"
    "{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] | trim }}{% else %}"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}<start_of_image>"
    "{% elif c['type'] == 'text' %}{{ c['text'] | trim }}{% endif %}{% endfor %}{% endif %}"
    "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
TEXT = {
    "tiny": TINY_DECODER
    | dict(head_dim=16, query_pre_attn_scalar=16, sliding_window=16, sliding_window_pattern=2),
    "demo": DEMO_DECODER
    | dict(head_dim=32, query_pre_attn_scalar=32, sliding_window=64, sliding_window_pattern=2),
    "full": dict(  # google/gemma-3-12b-it
        vocab_size=262208,
        hidden_size=3840,
        intermediate_size=15360,
        num_hidden_layers=48,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=256,
        query_pre_attn_scalar=256,
        sliding_window=1024,
        max_position_embeddings=131072,
        rope_parameters={
            "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        },
    ),
}
VISION = {  # SigLIP
    "tiny": dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=56
    ),
    "demo": dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, image_size=84
    ),
    "full": dict(  # google/siglip-so400m-patch14-384 at 896 pixels
        hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16, image_size=896
    ),
}
IMAGE_TOKENS = {"tiny": 4, "demo": 9, "full": 256}  # the projector average-pools the patch grid to this many


def build_gemma3(size: str) -> tuple[PreTrainedModel, ProcessorMixin]:
    tokenizer = train_tokenizer(
        SPECIALS,
        adds_bos=True,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        extra_special_tokens={
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
            "image_token": "<image_soft_token>",
        },
    )
    vision = dict(model_type="siglip_vision_model", patch_size=14, vision_use_head=False) | VISION[size]
    side = vision["image_size"]
    processor = Gemma3Processor(
        image_processor=Gemma3ImageProcessor(size={"height": side, "width": side}),
        tokenizer=tokenizer,
        image_seq_length=IMAGE_TOKENS[size],
        chat_template=CHAT_TEMPLATE,
    )
    ids = tokenizer.convert_tokens_to_ids
    config = Gemma3Config(
        text_config=token_settings(tokenizer, bos="<bos>", eos=["<eos>", "<end_of_turn>"]) | TEXT[size],
        vision_config=vision,
        mm_tokens_per_image=IMAGE_TOKENS[size],
        boi_token_index=ids("<start_of_image>"),
        eoi_token_index=ids("<end_of_image>"),
        image_token_index=ids("<image_soft_token>"),
    )
    model = Gemma3ForConditionalGeneration(config).eval()
    # The projector starts at zero, which would hide the image from the language model entirely.
    torch.nn.init.normal_(model.model.multi_modal_projector.mm_input_projection_weight, std=0.02)
    return model, processor
