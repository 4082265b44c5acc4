"""Molmo2 (the native stand-in for HALP's Molmo-7B-D, which is remote code only), real classes and
processor, random weights: "tiny" has 56-pixel crops (4x4 patches pooled 2x2) and at most 2 high-res
crops; "full" has Molmo2-8B's numbers. As in the real checkpoint, the image special tokens live in the
embedding's `additional_vocab_size` rows, past the vocabulary the LM head predicts."""

from __future__ import annotations

from transformers import (
    Molmo2Config,
    Molmo2ForConditionalGeneration,
    Molmo2ImageProcessor,
    Molmo2Processor,
    Molmo2VideoProcessor,
    PreTrainedModel,
    ProcessorMixin,
)

from halp.models.synthetic.common import TINY_DECODER, token_settings, train_tokenizer
from halp.models.synthetic.qwen_vl import CHAT_TEMPLATE as QWEN_TEMPLATE

SPECIALS = ["<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|image|>", "<|video|>"]
IMAGE_SPECIALS = [  # added after the vocabulary, so their ids index the additional rows
    "<im_start>",
    "<im_end>",
    "<im_patch>",
    "<im_col>",
    "<low_res_im_start>",
    "<frame_start>",
    "<frame_end>",
    "<im_low>",
]
CHAT_TEMPLATE = QWEN_TEMPLATE.replace("<|vision_start|><|image_pad|><|vision_end|>", "<|image|>")
TEXT = {
    "tiny": TINY_DECODER | dict(head_dim=16),
    "full": dict(  # allenai/Molmo2-8B (Qwen3-8B inside)
        hidden_size=4096,
        intermediate_size=12288,
        num_hidden_layers=36,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        max_position_embeddings=36864,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
    ),
}
VISION = {  # SigLIP-2; the adapter reads (and concatenates) two of its layers
    "tiny": dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
        image_size=[56, 56],
    ),
    "full": dict(
        hidden_size=1152,
        intermediate_size=4304,
        num_hidden_layers=25,
        num_attention_heads=16,
        num_key_value_heads=16,
        head_dim=72,
        image_size=[378, 378],
    ),
}
ADAPTER = {
    "tiny": dict(
        vision_feature_layer=[-1, -2],
        hidden_size=32,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
        intermediate_size=128,
    ),
    "full": dict(
        vision_feature_layer=[24, 18],
        hidden_size=1152,
        num_attention_heads=16,
        num_key_value_heads=16,
        head_dim=72,
        intermediate_size=12288,
    ),
}
CROPS = {"tiny": dict(max_crops=2, overlap_margins=[1, 1]), "full": dict(max_crops=8, overlap_margins=[4, 4])}
FULL_VOCABULARY = 151936


def build_molmo2(size: str) -> tuple[PreTrainedModel, ProcessorMixin]:
    tokenizer = train_tokenizer(  # the processor writes the BOS ahead of every prompt
        SPECIALS,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens={"image_token": "<|image|>", "video_token": "<|video|>"},
    )
    vocabulary = len(tokenizer)
    tokenizer.add_tokens(IMAGE_SPECIALS, special_tokens=True)
    vision = VISION[size]
    processor = Molmo2Processor(
        image_processor=Molmo2ImageProcessor(
            size={"height": vision["image_size"][0], "width": vision["image_size"][1]}, **CROPS[size]
        ),
        video_processor=Molmo2VideoProcessor(),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )
    text = token_settings(tokenizer, bos="<|endoftext|>", eos="<|im_end|>") | TEXT[size]
    text |= dict(vocab_size=vocabulary, additional_vocab_size=len(IMAGE_SPECIALS))
    if size == "full":  # the real ids: the vocabulary, then 128 additional rows
        text |= dict(vocab_size=FULL_VOCABULARY, additional_vocab_size=128)
    ids = tokenizer.convert_tokens_to_ids
    config = Molmo2Config(
        text_config=text,
        vision_config=vision,
        adapter_config=ADAPTER[size] | dict(text_hidden_size=text["hidden_size"]),
        image_start_token_id=ids("<im_start>"),
        low_res_image_start_token_id=ids("<low_res_im_start>"),
        image_end_token_id=ids("<im_end>"),
        image_patch_id=ids("<im_patch>"),
        frame_start_token_id=ids("<frame_start>"),
        frame_end_token_id=ids("<frame_end>"),
    )
    return Molmo2ForConditionalGeneration(config).eval(), processor
