"""Benchmark models built in memory: where and as they run, the same weights as the saved ones."""

from __future__ import annotations

import pytest
import torch

from halp.models.loading import ready
from halp.models.synthetic import build_in_memory
from tests.conftest import ARCHS


@pytest.mark.parametrize("arch", ARCHS)
def test_in_memory_build_equals_the_saved_tiny_model(arch, load_tiny):
    saved = load_tiny(arch)
    model, processor = build_in_memory(arch, "tiny", torch.device("cpu"), torch.float32)
    built = ready(model, processor, f"synthetic {arch}")
    expected = saved.model.state_dict()
    got = built.model.state_dict()
    assert got.keys() == expected.keys()  # Phi-4's vision LoRA included
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, atol=0, rtol=0, msg=name)
    if arch == "phi4mm":
        assert built.model.active_adapters() == saved.model.active_adapters() == ["vision"]


def test_parameters_are_made_in_the_target_dtype():
    model, _ = build_in_memory("qwen2_5_vl", "tiny", torch.device("cpu"), torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert torch.get_default_dtype() == torch.float32  # restored
