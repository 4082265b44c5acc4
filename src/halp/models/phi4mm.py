"""Phi-4-multimodal: the processor expands <|image|> into many image tokens; VT is the last of them.

VF is the SigLIP encoder's hidden state at the layer the model feeds its projector (`feature_layer`),
mean over the real patches of the real crops (global crop + sub-crops), before projection. The image
processor pads masks of padding crops with ones, so real crops are counted from `image_sizes`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import AutoModelForCausalLM, BatchFeature, PreTrainedModel
from transformers.utils import cached_file
from transformers.utils.output_capturing import maybe_install_capturing_hooks

from halp.models.adapter import Adapter, resolve

log = logging.getLogger(__name__)
VISION_LORA = "vision-lora"
PHI4MM_VISION = "model.embed_tokens_extend.image_embed.img_processor"


def pool_real_patches(output, inputs: BatchFeature, model: nn.Module) -> Tensor:
    features = output.hidden_states[model.config.vision_config.feature_layer].float()  # [B * crops, P, D]
    pixels = inputs["image_pixel_values"]  # [B, crops, 3, crop, crop]
    batch, crops, crop = pixels.shape[0], pixels.shape[1], pixels.shape[-1]
    features = features.view(batch, crops, -1, features.shape[-1])
    mask = inputs["image_attention_mask"].flatten(2).to(features.device, features.dtype)  # [B, crops, P]
    sub_crops = (inputs["image_sizes"] // crop).prod(dim=-1)  # [B]
    real_crop = torch.arange(crops, device=features.device)[None] <= sub_crops[:, None].to(features.device)
    weights = mask * real_crop[..., None]
    return (features * weights[..., None]).sum(dim=(1, 2)) / weights.sum(dim=(1, 2))[:, None]


def repair_loaded(model: PreTrainedModel, processor, source: str, revision: str | None) -> None:
    """Work around three transformers 5.23 bugs and activate the vision LoRA.

    1. `Phi4MultimodalProcessor.__init__` takes no chat template, so `from_pretrained` drops it.
    2. An image forward lazily installs output-capturing hooks on the SigLIP encoder; a later outer
       call with `output_hidden_states=True` installs them again and crashes. Installing all of them
       once, top-down, right after loading avoids it.
    3. The SigLIP attention says `is_causal = True`, so sdpa and flash-attn attend causally whenever a
       batch has no padded patch (no mask is built): features then depend on the batch. SigLIP is
       bidirectional.
    The real checkpoint answers about images only with its vision LoRA active (a model built in memory
    may carry one already).
    """
    if processor.chat_template is None:
        processor.chat_template = Path(
            cached_file(source, "chat_template.jinja", revision=revision)
        ).read_text()
    maybe_install_capturing_hooks(model)
    for module in resolve(model, PHI4MM_VISION).modules():
        if getattr(module, "is_causal", False):
            module.is_causal = False
    if "vision" in getattr(model, "peft_config", {}):
        model.set_adapter("vision")
    elif not Path(source).is_dir() or (Path(source) / VISION_LORA).is_dir():
        where = {"subfolder": VISION_LORA} | ({"revision": revision} if revision else {})
        model.load_adapter(source, adapter_name="vision", adapter_kwargs=where)
        model.set_adapter("vision")
        log.info("vision LoRA from %s/%s is active", source, VISION_LORA)


PHI4MM = Adapter(
    decoder_blocks="model.layers",
    final_norm="model.norm",
    vision_encoder=PHI4MM_VISION,
    image_token_id="vision_config.image_token_id",
    pool_vision=pool_real_patches,
    vision_call=lambda inputs, model: (
        (inputs["image_pixel_values"].flatten(0, 1),),
        {
            "patch_attention_mask": inputs["image_attention_mask"].flatten(0, 1).bool(),
            "output_hidden_states": True,
        },
    ),
    auto_class=AutoModelForCausalLM,
    after_load=repair_loaded,
)
