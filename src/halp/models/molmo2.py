"""Molmo2 (the native stand-in for HALP's Molmo-7B-D): a low-resolution view, then high-resolution crops,
each a grid of <im_patch> tokens (one per 2x2 pooled patches) with <im_col> at each row's end; VT is the
last <im_patch>.

VF is what the adapter pools from: the SigLIP-2 tower's hidden states at the adapter's
`vision_feature_layer`s, concatenated, mean over every patch some image token pools
(`image_token_pooling >= 0`, so crop padding and overlap margins nobody reads are left out). The image
tokens attend each other both ways through `mm_token_type_ids`, a mask flash-attention-2 drops in
transformers 5.23, so this model runs on sdpa or eager.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from transformers import BatchFeature

from halp.models.adapter import Adapter


def pool_read_patches(output, inputs: BatchFeature, model: nn.Module) -> Tensor:
    layers = [
        layer + 1 if layer >= 0 else layer for layer in model.config.adapter_config.vision_feature_layer
    ]
    features = torch.cat([output.hidden_states[layer] for layer in layers], dim=-1).float()
    features = features.reshape(-1, features.shape[-1])  # [all crops' patches, D * n_layers]
    grids = inputs["image_grids"]  # per image: low-res and high-res token grids
    tokens_per_image = (grids[:, 0] * grids[:, 1] + grids[:, 2] * grids[:, 3]).tolist()
    pooled = []
    for indices in inputs["image_token_pooling"].split(tokens_per_image):
        read = indices[indices >= 0].unique().to(features.device)
        pooled.append(features[read].mean(dim=0))
    return torch.stack(pooled)


MOLMO2 = Adapter(
    decoder_blocks="model.language_model.layers",
    final_norm="model.language_model.norm",
    vision_encoder="model.vision_tower",
    image_token_id="image_token_id",
    pool_vision=pool_read_patches,
    vision_call=lambda inputs, model: ((inputs["pixel_values"],), {"output_hidden_states": True}),
    nest_images=True,
    flash_attention=False,
)
