"""SmolVLM2, real classes and processor, random weights: "tiny" splits images into up to 2x2 crops of 56
pixels (4 image tokens each) plus the global image; "demo" (an organism trained here) doubles a demo image
to 168 pixels and cuts it into 2x2 crops of 84 (3x3 tokens each, so every 28-pixel cell of the demo world
is 2x2 whole tokens: with 56-pixel crops of a 112-pixel image the cells straddle tokens, and the organism
learned to see colours and shapes markedly worse in the same steps); "full" has SmolVLM2-2.2B-Instruct's
numbers."""

from __future__ import annotations

from transformers import (
    PreTrainedModel,
    ProcessorMixin,
    SmolVLMConfig,
    SmolVLMForConditionalGeneration,
    SmolVLMImageProcessor,
    SmolVLMProcessor,
    SmolVLMVideoProcessor,
)

from halp.models.synthetic.common import DEMO_DECODER, TINY_DECODER, token_settings, train_tokenizer

GRID = 4  # <row_r_col_c> tokens up to this many crops a side
SPECIALS = [
    "<unk>",
    "<|endoftext|>",
    "<|im_start|>",
    "<end_of_utterance>",
    "<fake_token_around_image>",
    "<global-img>",
    "<image>",
    *(f"<row_{r}_col_{c}>" for r in range(1, GRID + 1) for c in range(1, GRID + 1)),
]
# The real template's shape: "User:<image>question<end_of_utterance>\nAssistant:".
CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}:{% else %}: {% endif %}"
    "{% for c in message['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}"
    "{% elif c['type'] == 'image' %}<image>{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
TEXT = {
    "tiny": TINY_DECODER | dict(model_type="llama"),
    "demo": DEMO_DECODER | dict(model_type="llama"),
    "full": dict(  # SmolLM2-1.7B inside HuggingFaceTB/SmolVLM2-2.2B-Instruct
        model_type="llama",
        vocab_size=49280,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=24,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 130000.0},
    ),
}
VISION = {  # SigLIP; each crop's patch grid is pixel-shuffled by scale_factor into image tokens
    "tiny": dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=56
    ),
    "demo": dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, image_size=84
    ),
    "full": dict(
        hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16, image_size=384
    ),
}
SCALE = {"tiny": 2, "demo": 2, "full": 3}
LONGEST_EDGE = {"tiny": 112, "demo": 168, "full": 1536}  # images are resized to this, then cut into crops


def build_smolvlm(size: str) -> tuple[PreTrainedModel, ProcessorMixin]:
    tokenizer = train_tokenizer(
        SPECIALS,
        bos_token="<|im_start|>",
        eos_token="<end_of_utterance>",
        pad_token="<|endoftext|>",
        extra_special_tokens={
            "fake_image_token": "<fake_token_around_image>",
            "image_token": "<image>",
            "end_of_utterance_token": "<end_of_utterance>",
            "global_image_token": "<global-img>",
        },
    )
    vision = dict(patch_size=14) | VISION[size]
    crop = vision["image_size"]
    processor = SmolVLMProcessor(
        image_processor=SmolVLMImageProcessor(
            size={"longest_edge": LONGEST_EDGE[size]}, max_image_size={"longest_edge": crop}
        ),
        tokenizer=tokenizer,
        video_processor=SmolVLMVideoProcessor(),
        image_seq_len=(crop // vision["patch_size"]) ** 2 // SCALE[size] ** 2,
        chat_template=CHAT_TEMPLATE,
    )
    config = SmolVLMConfig(
        text_config=token_settings(tokenizer, bos="<|im_start|>", eos="<end_of_utterance>") | TEXT[size],
        vision_config=vision,
        scale_factor=SCALE[size],
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
    )
    return SmolVLMForConditionalGeneration(config).eval(), processor
