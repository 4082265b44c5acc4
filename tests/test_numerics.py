"""halp's numbers do not depend on whether an Intel CPU offers AVX-512 (not across vendors:
docs/reproducibility.md)."""

from __future__ import annotations

import os

import pytest
import yaml

from tests.conftest import halp

pytestmark = pytest.mark.slow
# What a CPU without AVX-512 looks like to MKL, oneDNN and PyTorch's own kernels.
AVX2_ONLY = {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}


def test_training_gives_the_same_weights_whatever_the_cpu_offers(tmp_path):
    """On an AVX-512 machine the uncapped run differed from this one from the first steps; capped, the
    demo VLM's weights are byte-identical (on a machine without AVX-512 both runs are AVX2 anyway). Both
    runs share this CPU's vendor, caches and thread count: what differs between two machines beyond the
    instruction set is measured in tools/cpu_paths.py, not here."""
    recipe = dict(n_images=16, steps=6, batch_size=8, warmup_steps=2, curriculum=[2, 4], heldout_images=2)
    weights = {}
    for name, env in (("this_cpu", {}), ("avx2_only", AVX2_ONLY)):
        folder = tmp_path / name
        folder.mkdir()
        organism = {"models_dir": ".", "recipe": recipe, "subjects": {"model": {"arch": "qwen2_vl"}}}
        params = {"organism": organism, "models": {}}
        (folder / "params.yaml").write_text(yaml.safe_dump(params))
        clean = {k: v for k, v in os.environ.items() if k not in AVX2_ONLY and k != "MKL_CBWR"}
        halp("train-demo", cwd=folder, env=clean | env)
        weights[name] = (folder / "model" / "model.safetensors").read_bytes()
    assert weights["this_cpu"] == weights["avx2_only"]
