"""Qwen2-VL and Qwen2.5-VL: many <|image_pad|> tokens; VF is the vision tower's output before the merger."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from transformers import BatchFeature

from halp.models.adapter import Adapter


def pool_patches_per_image(output, inputs: BatchFeature, model: nn.Module) -> Tensor:
    """Mean of each image's own patches. The tower concatenates all images' patches ([P_total, D_vis],
    pre-merger); `image_grid_thw` says how many belong to each. Qwen2.5-VL permutes patches into
    windows, but only within an image, and a mean does not depend on order."""
    sizes = inputs["image_grid_thw"].prod(dim=-1).tolist()
    patches = output.last_hidden_state.float()
    return torch.stack([chunk.mean(dim=0) for chunk in patches.split(sizes)])


def merged_grids(inputs: BatchFeature, model: nn.Module) -> list[tuple[int, int, int]]:
    """(t, h, w) of each image's tokens after the 2x2 merge: t * h * w tokens, row by row."""
    merge = model.config.vision_config.spatial_merge_size
    return [(t, h // merge, w // merge) for t, h, w in inputs["image_grid_thw"].tolist()]


QWEN_VL = Adapter(
    decoder_blocks="model.language_model.layers",
    final_norm="model.language_model.norm",
    vision_encoder="model.visual",
    image_token_id="image_token_id",
    pool_vision=pool_patches_per_image,
    vision_call=lambda inputs, model: ((inputs["pixel_values"],), {"grid_thw": inputs["image_grid_thw"]}),
    token_grid=merged_grids,
)
