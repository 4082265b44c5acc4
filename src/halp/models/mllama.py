"""Llama-3.2-Vision (Mllama): one <|image|> token; images enter the decoder through cross-attention blocks.

VF is the vision model's output (last + intermediate layers concatenated, before the projector), mean
over the patches of the tiles `aspect_ratio_mask` marks real. The CLS position of each tile is left out:
VF is a mean over image patches for every architecture, and Qwen and SigLIP have no CLS.
"""

from __future__ import annotations

from torch import Tensor, nn
from transformers import BatchFeature

from halp.models.adapter import Adapter


def pool_real_tiles(output, inputs: BatchFeature, model: nn.Module) -> Tensor:
    features = output.last_hidden_state[..., 1:, :].float()  # [B, n_img, n_tiles, patches, D], CLS dropped
    real = inputs["aspect_ratio_mask"].to(features.device, features.dtype)  # [B, n_img, n_tiles]
    summed = (features * real[..., None, None]).sum(dim=(1, 2, 3))
    return summed / (real.sum(dim=(1, 2)) * features.shape[-2])[:, None]


MLLAMA = Adapter(
    decoder_blocks="model.language_model.layers",  # self- and cross-attention blocks, in order
    final_norm="model.language_model.norm",
    vision_encoder="model.vision_model",
    image_token_id="image_token_id",
    pool_vision=pool_real_tiles,
    vision_call=lambda inputs, model: (
        (),
        {k: inputs[k] for k in ("pixel_values", "aspect_ratio_ids", "aspect_ratio_mask")},
    ),
    nest_images=True,
    cross_attention="cross_attn",
)
