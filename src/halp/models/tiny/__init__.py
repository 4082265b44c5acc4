"""Tiny, randomly initialised models of the real architectures, saved like real checkpoints."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from transformers import PreTrainedModel, ProcessorMixin

from halp.models.tiny.mllama import build_tiny_mllama
from halp.models.tiny.phi4mm import build_tiny_phi4mm, save_vision_lora
from halp.models.tiny.qwen_vl import build_tiny_qwen

log = logging.getLogger(__name__)

BUILDERS: dict[str, Callable[[], tuple[PreTrainedModel, ProcessorMixin]]] = {
    "qwen2_vl": partial(build_tiny_qwen, "qwen2_vl"),
    "qwen2_5_vl": partial(build_tiny_qwen, "qwen2_5_vl"),
    "mllama": build_tiny_mllama,
    "phi4mm": build_tiny_phi4mm,
}
# Checkpoint parts that are not the model's own weights, written after them (they may wrap the model).
EXTRAS: dict[str, Callable[[PreTrainedModel, Path], None]] = {"phi4mm": save_vision_lora}


def build_tiny(arch: str, out_dir: Path, seed: int) -> Path:
    """Build one tiny model with a seeded init and save model + processor to out_dir/arch."""
    if arch not in BUILDERS:
        raise ValueError(f"no tiny builder for {arch!r}; known: {', '.join(sorted(BUILDERS))}")
    torch.manual_seed(seed)
    model, processor = BUILDERS[arch]()
    folder = out_dir / arch
    shutil.rmtree(folder, ignore_errors=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    if arch in EXTRAS:
        EXTRAS[arch](model, folder)
    log.info("tiny %s: %d parameters -> %s", arch, sum(p.numel() for p in model.parameters()), folder)
    return folder
