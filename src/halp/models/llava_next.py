"""LLaVA-NeXT (v1.6): many <image> tokens (a base tile, then the unpadded anyres grid with one newline
per row); VT is the last of them.

VF is what the model hands its projector: the CLIP tower's hidden state at `vision_feature_layer` (-2,
before the final LayerNorm), CLS dropped, over the real tiles of each image, unpadded exactly as the LM
sees it (`pack_image_features` without newlines), then averaged: one vector per image.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from transformers import BatchFeature
from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

from halp.models.adapter import Adapter


def real_tiles(inputs: BatchFeature, model: nn.Module) -> list[int]:
    """Tiles per image (base + grid); the processor pads every image to the batch's most."""
    config = model.config
    return [
        image_size_to_num_patches(size, config.image_grid_pinpoints, config.vision_config.image_size)
        for size in inputs["image_sizes"]
    ]


def pool_unpadded_tiles(output, inputs: BatchFeature, model: nn.Module) -> Tensor:
    config = model.config
    features = output.hidden_states[config.vision_feature_layer]  # [all real tiles, 1 + P, D]
    if config.vision_feature_select_strategy == "default":
        features = features[:, 1:]
    per_image, _ = model.pack_image_features(
        features.split(real_tiles(inputs, model)),
        inputs["image_sizes"],
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        image_newline=None,
    )
    return torch.stack([image.float().mean(dim=0) for image in per_image])


def tower_call(inputs: BatchFeature, model: nn.Module) -> tuple[tuple, dict]:
    """The real tiles of every image, stacked, with all hidden states (the model asks only for one)."""
    tiles = [pixels[:n] for pixels, n in zip(inputs["pixel_values"], real_tiles(inputs, model), strict=True)]
    return (torch.cat(tiles),), {"output_hidden_states": True}


LLAVA_NEXT = Adapter(
    decoder_blocks="model.language_model.layers",
    final_norm="model.language_model.norm",
    vision_encoder="model.vision_tower",
    image_token_id="image_token_id",
    pool_vision=pool_unpadded_tiles,
    vision_call=tower_call,
)
