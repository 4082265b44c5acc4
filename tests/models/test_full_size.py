"""Full-size synthetic configs: the real checkpoints' architecture, checked by parameter count on `meta`."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from halp.models.layers import resolve_layers
from halp.models.registry import ADAPTERS
from halp.models.synthetic import instantiate
from halp.models.synthetic.phi4mm import LORA_TARGETS

# published parameter counts of the real checkpoints (model cards / safetensors totals)
PUBLISHED = {
    "qwen2_vl": 8.29e9,
    "qwen2_5_vl": 8.29e9,
    "mllama": 10.67e9,
    "phi4mm": 5.57e9,
    "llava_next": 7_566_747_648,  # llava-hf/llava-v1.6-mistral-7b-hf's safetensors total
    "gemma3": 12_187_325_040,  # google/gemma-3-12b-it
    "smolvlm": 2_246_784_880,  # HuggingFaceTB/SmolVLM2-2.2B-Instruct
    "fast_vlm": 7.76e9,  # apple/FastVLM-7B (converted: KamilaMila/FastVLM-7B)
    "molmo2": 8_661_703_120,  # allenai/Molmo2-8B
}
FRACTIONS = [0, 0.25, 0.5, 0.75, 1.0]
RESOLVED = {
    "qwen2_vl": [0, 7, 14, 21, 27],
    "qwen2_5_vl": [0, 7, 14, 21, 27],
    "mllama": [0, 10, 20, 30, 39],
    "phi4mm": [0, 8, 16, 24, 31],
    "llava_next": [0, 8, 16, 24, 31],
    "gemma3": [0, 12, 24, 36, 47],
    "smolvlm": [0, 6, 12, 18, 23],
    "fast_vlm": [0, 7, 14, 21, 27],
    "molmo2": [0, 9, 18, 27, 35],
}
PHI4MM_LORA_RANKS = {"vision": 256, "speech": 320}  # the checkpoint's vision-lora and speech-lora


@pytest.fixture(scope="module", params=list(PUBLISHED))
def full(request):
    with torch.device("meta"):
        model, _ = instantiate(request.param, "full")
    return request.param, model


def lora_parameters(model: nn.Module, rank: int) -> int:
    """What a LoRA of this rank on the language model's LORA_TARGETS adds: rank * (in + out) per Linear."""
    return sum(
        rank * (module.in_features + module.out_features)
        for name, module in model.model.layers.named_modules()
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in LORA_TARGETS
    )


def test_parameter_count_matches_the_published_size(full):
    arch, model = full
    count = sum(p.numel() for p in model.parameters())
    if arch == "phi4mm":  # the native class leaves out the two LoRA adapters the checkpoint ships
        count += sum(lora_parameters(model, r) for r in PHI4MM_LORA_RANKS.values())
    assert count == pytest.approx(PUBLISHED[arch], rel=0.03)


def test_fractional_layers_resolve_against_the_real_depth(full):
    arch, model = full
    adapter = ADAPTERS[model.config.model_type]
    assert resolve_layers(FRACTIONS, len(adapter.blocks(model))) == RESOLVED[arch]
