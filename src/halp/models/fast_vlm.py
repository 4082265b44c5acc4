"""FastVLM: the image becomes (side / 64)^2 <image> tokens (256 at 1024 pixels); VT is the last of them.

VF is the timm FastViT-MCi3 tower's output (its final conv: [B, 3072, 16, 16], what the projector
reads), mean over the spatial grid. The processor (CLIP's) centre-crops a non-square image, so its sides
never reach the model (Apple's own code pads instead).
"""

from __future__ import annotations

from torch import Tensor, nn
from transformers import BatchFeature

from halp.models.adapter import Adapter


def mean_over_grid(output, inputs: BatchFeature, model: nn.Module) -> Tensor:
    return output.last_hidden_state.float().mean(dim=(2, 3))  # [B, C, H, W] -> [B, C]


FAST_VLM = Adapter(
    decoder_blocks="model.language_model.layers",
    final_norm="model.language_model.norm",
    vision_encoder="model.vision_tower",
    image_token_id="image_token_id",
    pool_vision=mean_over_grid,
    vision_call=lambda inputs, model: ((inputs["pixel_values"],), {}),
)
