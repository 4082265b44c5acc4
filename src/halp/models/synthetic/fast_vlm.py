"""FastVLM, real classes (FastVlmForConditionalGeneration, a timm FastViT-MCi3 tower) and processor
(LlavaProcessor with CLIP's image processor), random weights: "tiny" has a one-block-per-stage FastViT on
128-pixel images (2x2 image tokens); "full" has FastVLM-7B's numbers (Qwen2-7B inside)."""

from __future__ import annotations

from torch import nn
from transformers import (
    CLIPImageProcessor,
    FastVlmConfig,
    FastVlmForConditionalGeneration,
    LlavaProcessor,
    PreTrainedModel,
    ProcessorMixin,
)

from halp.models.synthetic.common import TINY_DECODER, token_settings, train_tokenizer
from halp.models.synthetic.qwen_vl import CHAT_TEMPLATE as QWEN_TEMPLATE

SPECIALS = ["<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>"]
# Qwen's template with LLaVA's image placeholder and its newline
CHAT_TEMPLATE = QWEN_TEMPLATE.replace("<|vision_start|><|image_pad|><|vision_end|>", "<image>\n")
DOWNSAMPLE = 64  # FastViT-MCi3 halves the resolution 6 times: one image token per 64x64 pixels
TEXT = {
    "tiny": TINY_DECODER | dict(model_type="qwen2"),
    "full": dict(  # Qwen2-7B inside FastVLM-7B
        model_type="qwen2",
        vocab_size=152128,
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
    ),
}
STAGES = {  # FastViT-MCi3's five stages; the tower's output width is twice the last (its final conv)
    "tiny": dict(layers=(1, 1, 1, 1, 1), embed_dims=(8, 16, 32, 64, 128)),
    "full": dict(layers=(2, 12, 24, 4, 2), embed_dims=(96, 192, 384, 768, 1536)),
}
IMAGE_SIZE = {"tiny": 128, "full": 1024}


def build_fast_vlm(size: str) -> tuple[PreTrainedModel, ProcessorMixin]:
    tokenizer = train_tokenizer(SPECIALS, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    side = IMAGE_SIZE[size]
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": side},
            crop_size={"height": side, "width": side},
            image_mean=[0.0, 0.0, 0.0],
            image_std=[1.0, 1.0, 1.0],
        ),
        tokenizer=tokenizer,
        patch_size=DOWNSAMPLE,
        vision_feature_select_strategy="full",
        chat_template=CHAT_TEMPLATE,
    )
    stages = STAGES[size]
    config = FastVlmConfig(
        text_config=token_settings(tokenizer, bos="<|endoftext|>", eos="<|im_end|>") | TEXT[size],
        vision_config=dict(
            model_type="timm_wrapper",
            architecture="fastvit_mci3",
            do_pooling=True,
            global_pool="avg",
            hidden_size=2 * stages["embed_dims"][-1],
            model_args=dict(inference_mode=True, **stages),
        ),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=(side // DOWNSAMPLE) ** 2,
    )
    model = FastVlmForConditionalGeneration(config).eval()
    if size == "tiny":
        _wake_tower(model.model.vision_tower)
    return model, processor


def _wake_tower(tower: nn.Module) -> None:
    """transformers' std-0.02 init and timm's 1e-5 layer scales leave a small FastViT's output near
    1e-15, so every image would look alike: Kaiming weights and unit layer scales make images differ."""
    for name, parameter in tower.named_parameters():
        if parameter.dim() > 1:
            nn.init.kaiming_normal_(parameter, nonlinearity="linear")
        elif "layer_scale" in name or name.endswith(".gamma"):
            nn.init.ones_(parameter)
