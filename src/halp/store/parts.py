"""Immutable HDF5 part files: written under a temporary name, renamed when complete, never modified."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
REPRESENTATIONS = ("vision_only", "vision_token", "query_token")
ARRAYS = (*REPRESENTATIONS, "first_token_logprobs", "first_token_ids")
TEXT_COLUMNS = ("sample_id", "image_id", "question", "ground_truth", "source", "category", "answer")
INT_COLUMNS = ("vision_token_pos", "query_token_pos", "seq_len", "n_image_tokens", "n_generated_tokens")
ERROR_COLUMNS = ("sample_id", "stage", "message")
PART_GLOB = "part-*.h5"
MANIFEST = "manifest.json"
ROWS_PER_CHUNK = 256

_text = h5py.string_dtype(encoding="utf-8")


@dataclass
class PartBuffer:
    """Rows (and failed samples) waiting to be written as the next part."""

    meta: list[dict[str, Any]] = field(default_factory=list)
    arrays: dict[str, list[np.ndarray]] = field(default_factory=lambda: {name: [] for name in ARRAYS})
    errors: list[dict[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.meta) + len(self.errors)

    def add(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.meta.append(meta)
        for name in ARRAYS:
            self.arrays[name].append(arrays[name])

    def fail(self, sample_id: str, stage: str, message: str) -> None:
        self.errors.append({"sample_id": sample_id, "stage": stage, "message": message})


def _float_for_storage(name: str, values: np.ndarray, dtype: str, ids: list[str]) -> np.ndarray:
    with np.errstate(over="ignore"):
        stored = values.astype(dtype)
    if not np.isfinite(stored).all() and np.isfinite(values).all():
        bad = sorted({ids[i] for i in np.argwhere(~np.isfinite(stored))[:, 0]})
        raise OverflowError(
            f"{name} of {bad[:5]} overflows {dtype} (residual streams have outliers): "
            "set storage_dtype: float32 for this model in params.yaml"
        )
    return stored


def _fill(f: h5py.File, buffer: PartBuffer, attrs: dict[str, Any], storage_dtype: str) -> None:
    for key, value in attrs.items():
        f.attrs[key] = value
    f.attrs["n_samples"] = len(buffer.meta)
    meta = f.create_group("meta")
    for column in TEXT_COLUMNS:
        meta.create_dataset(column, data=[str(m[column]) for m in buffer.meta], dtype=_text)
    for column in INT_COLUMNS:
        meta.create_dataset(column, data=np.array([m[column] for m in buffer.meta], dtype=np.int64))
    ids = [m["sample_id"] for m in buffer.meta]
    for name in ARRAYS if buffer.meta else ():
        values = np.stack(buffer.arrays[name])
        if name in REPRESENTATIONS:
            values = _float_for_storage(name, values, storage_dtype, ids)
        # One chunk holds one layer of up to ROWS_PER_CHUNK samples: reading a layer is a few big reads.
        chunks = (min(len(values), ROWS_PER_CHUNK), *(1 for _ in values.shape[1:-1]), values.shape[-1])
        f.create_dataset(name, data=values, chunks=chunks)
    errors = f.create_group("errors")
    for column in ERROR_COLUMNS:
        errors.create_dataset(column, data=[e[column] for e in buffer.errors], dtype=_text)


def write_part(path: Path, buffer: PartBuffer, attrs: dict[str, Any], storage_dtype: str) -> None:
    """Write buffer to `path` atomically: a reader sees the whole part or none of it."""
    temporary = path.with_name(path.name + ".tmp")
    try:
        with h5py.File(temporary, "w") as f:
            _fill(f, buffer, attrs, storage_dtype)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    os.replace(temporary, path)


def read_text(dataset: h5py.Dataset) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in dataset[()]]


class PartFolder:
    """A model's folder of parts: finds finished work, drops stale parts, names the next part.

    Several processes may write into one folder: process `rank` of `world` numbers its parts in its own
    residue class modulo `world`, so names never collide, whatever ran before.
    """

    def __init__(self, folder: Path, config_hash: str, rank: int = 0, world: int = 1):
        self.folder = folder
        self.config_hash = config_hash
        self.rank, self.world = rank, world
        self._next: int | None = None

    def parts(self) -> list[Path]:
        return sorted(self.folder.glob(PART_GLOB))

    def clean(self) -> None:
        """Remove leftovers of killed runs, the old manifest and other configs' parts (one process only)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for leftover in self.folder.glob("*.tmp"):
            log.info("removing incomplete %s left by an interrupted run", leftover.name)
            leftover.unlink()
        (self.folder / MANIFEST).unlink(missing_ok=True)
        for part in self.parts():
            with h5py.File(part, "r") as f:
                stale = f.attrs.get("config_hash") != self.config_hash
            if stale:
                log.warning("removing %s: it was extracted with another configuration", part.name)
                part.unlink()

    def done(self) -> set[str]:
        """Sample ids already in a part (extracted or failed)."""
        done: set[str] = set()
        for part in self.parts():
            with h5py.File(part, "r") as f:
                done.update(read_text(f["meta/sample_id"]))
                done.update(read_text(f["errors/sample_id"]))
        return done

    def next_part(self) -> Path:
        if self._next is None:
            start = max((int(p.stem.split("-")[1]) for p in self.parts()), default=-1) + 1
            self._next = start + (self.rank - start) % self.world
        path = self.folder / f"part-{self._next:05d}.h5"
        self._next += self.world
        return path

    def write_manifest(self, model: str, order: list[str]) -> None:
        """Record the parts and the sampled order; the reader presents rows in this order."""
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "model": model,
            "config_hash": self.config_hash,
            "parts": [p.name for p in self.parts()],
            "order": order,
        }
        temporary = self.folder / (MANIFEST + ".tmp")
        temporary.write_text(json.dumps(manifest, indent=1) + "\n")
        os.replace(temporary, self.folder / MANIFEST)
