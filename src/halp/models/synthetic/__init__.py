"""Randomly initialised models of the real architectures, saved and loaded like real checkpoints.

"tiny" models run the tests and the default pipeline on a CPU; "demo" ones are the organisms trained here
(`halp.organism`); "full" ones have the real checkpoints' architecture numbers, for GPU benchmarks (the
hub, and so real weights, are out of reach here).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import torch
from transformers import PreTrainedModel, ProcessorMixin

from halp.config import ORGANISM_ARCHS
from halp.models.synthetic.fast_vlm import build_fast_vlm
from halp.models.synthetic.gemma3 import build_gemma3
from halp.models.synthetic.llava_next import build_llava_next
from halp.models.synthetic.mllama import build_mllama
from halp.models.synthetic.molmo2 import build_molmo2
from halp.models.synthetic.phi4mm import attach_vision_lora, build_phi4mm, save_vision_lora
from halp.models.synthetic.qwen_vl import build_qwen
from halp.models.synthetic.smolvlm import build_smolvlm

log = logging.getLogger(__name__)
SIZES = ("tiny", "demo", "full")

BUILDERS: dict[str, Callable[[str], tuple[PreTrainedModel, ProcessorMixin]]] = {
    "qwen2_vl": partial(build_qwen, "qwen2_vl"),
    "qwen2_5_vl": partial(build_qwen, "qwen2_5_vl"),
    "mllama": build_mllama,
    "phi4mm": build_phi4mm,
    "llava_next": build_llava_next,
    "gemma3": build_gemma3,
    "smolvlm": build_smolvlm,
    "fast_vlm": build_fast_vlm,
    "molmo2": build_molmo2,
}
# Checkpoint parts that are not the model's own weights (Phi-4's vision LoRA): written after them (they
# may wrap the model), or attached to a model used in memory.
EXTRAS: dict[str, Callable[[PreTrainedModel, Path, str], None]] = {"phi4mm": save_vision_lora}
ATTACH: dict[str, Callable[[PreTrainedModel, str], None]] = {"phi4mm": attach_vision_lora}


def instantiate(arch: str, size: str = "tiny") -> tuple[PreTrainedModel, ProcessorMixin]:
    """Model and processor in memory; the caller seeds torch (and may pick a device context)."""
    if arch not in BUILDERS:
        raise ValueError(f"no synthetic builder for {arch!r}; known: {', '.join(sorted(BUILDERS))}")
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, not {size!r}")
    if size == "demo" and arch not in ORGANISM_ARCHS:
        raise ValueError(
            f"{arch} has no demo size; the organisms' architectures: {', '.join(ORGANISM_ARCHS)}"
        )
    return BUILDERS[arch](size)


def build_synthetic(arch: str, out_dir: Path, seed: int, size: str = "tiny") -> Path:
    """Build one model with a seeded init and save model + processor to out_dir/arch."""
    torch.manual_seed(seed)
    model, processor = instantiate(arch, size)
    folder = out_dir / arch
    shutil.rmtree(folder, ignore_errors=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    if arch in EXTRAS:
        EXTRAS[arch](model, folder, size)
    log.info("%s %s: %d parameters -> %s", size, arch, sum(p.numel() for p in model.parameters()), folder)
    return folder


@contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def build_in_memory(
    arch: str, size: str, device: torch.device, dtype: torch.dtype, seed: int = 0
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """One model built where and as it will run: parameters made on `device` in `dtype` from the start,
    so a full-size model needs neither a float32 copy (33 GB for Qwen2.5-VL-7B) nor a disk round trip."""
    torch.manual_seed(seed)
    with torch.device(device), _default_dtype(dtype):
        model, processor = instantiate(arch, size)
        if arch in ATTACH:
            ATTACH[arch](model, size)
    return model.eval(), processor
