"""SmolVLM2: each image becomes crops (a <row_r_col_c> block of <image> tokens each, then the global
image's); VT is the last <image>, which lies in the global image.

VF is SigLIP's last hidden state (after its final LayerNorm, before the pixel shuffle and connector),
mean over the real patches (`pixel_attention_mask`) of the sample's real crops: the processor pads every
sample to the batch's most crops with all-zero images, which the model itself drops by that rule.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from transformers import BatchFeature

from halp.models.adapter import Adapter


def real_crops(inputs: BatchFeature, model: nn.Module) -> tuple[Tensor, Tensor]:
    """([B, N] real crops, [B, N, h, w] real patches), found as the model finds them."""
    pixels = inputs["pixel_values"]  # [B, N, C, H, W]
    real = (pixels != 0).flatten(2).any(dim=-1)
    patch = model.config.vision_config.patch_size
    mask = inputs["pixel_attention_mask"].unfold(2, patch, patch).unfold(3, patch, patch)
    return real, mask.sum(dim=(-1, -2)) > 0


def pool_real_crops(output, inputs: BatchFeature, model: nn.Module) -> Tensor:
    real, patches = real_crops(inputs, model)
    features = output.last_hidden_state.float()  # [real crops of the batch, P, D]
    weights = patches[real].flatten(1).to(features.device, features.dtype)  # [real crops, P]
    sums = (features * weights[..., None]).sum(dim=1)
    crops = real.sum(dim=1).tolist()
    return torch.stack(
        [s.sum(dim=0) / w.sum() for s, w in zip(sums.split(crops), weights.split(crops), strict=True)]
    )


def tower_call(inputs: BatchFeature, model: nn.Module) -> tuple[tuple, dict]:
    real, patches = real_crops(inputs, model)
    return (), {"pixel_values": inputs["pixel_values"][real], "patch_attention_mask": patches[real]}


SMOLVLM = Adapter(
    decoder_blocks="model.text_model.layers",
    final_norm="model.text_model.norm",
    vision_encoder="model.vision_model",
    image_token_id="image_token_id",
    pool_vision=pool_real_crops,
    vision_call=tower_call,
    nest_images=True,
)
