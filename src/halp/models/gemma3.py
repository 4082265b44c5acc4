"""Gemma-3: <start_of_image> expands into a fixed number of <image_soft_token>s (`config.image_token_id`;
the processor's own `image_token_id` is <start_of_image>); VT is the last soft token.

VF is SigLIP's last hidden state (after its final LayerNorm: what the projector pools and projects), mean
over the patches. Pan-and-scan (off by default) would add crops per image; the engine refuses that batch.
The image tokens attend each other both ways through `token_type_ids`, a mask flash-attention-2 drops in
transformers 5.23, so this model runs on sdpa or eager.
"""

from __future__ import annotations

import math

from torch import Tensor, nn
from transformers import BatchFeature

from halp.models.adapter import Adapter


def mean_of_patches(output, inputs: BatchFeature, model: nn.Module) -> Tensor:
    return output.last_hidden_state.float().mean(dim=1)  # [B, P, D] -> [B, D]


def pooled_grid(inputs: BatchFeature, model: nn.Module) -> list[tuple[int, int, int]]:
    """The projector average-pools the square image's patch grid to k x k tokens, row by row."""
    side = math.isqrt(model.config.mm_tokens_per_image)
    return [(1, side, side)] * len(inputs["pixel_values"])


GEMMA3 = Adapter(
    decoder_blocks="model.language_model.layers",
    final_norm="model.language_model.norm",
    vision_encoder="model.vision_tower",
    image_token_id="image_token_id",
    pool_vision=mean_of_patches,
    vision_call=lambda inputs, model: ((), {"pixel_values": inputs["pixel_values"]}),
    nest_images=True,
    flash_attention=False,
    token_grid=pooled_grid,
)
