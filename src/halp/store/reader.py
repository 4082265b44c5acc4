"""A model's embeddings folder as one table: meta as a DataFrame, any (representation, layer) as [N, H]."""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd

from halp.store.parts import (
    ERROR_COLUMNS,
    INT_COLUMNS,
    MANIFEST,
    PART_GLOB,
    REPRESENTATIONS,
    TEXT_COLUMNS,
    read_text,
    replaced_parts,
)


class Embeddings:
    """All parts of one model's folder, rows in the sampled order (the manifest's), or part order if a run
    was interrupted before writing one."""

    def __init__(self, folder: Path | str):
        self.folder = Path(folder)
        found = sorted(self.folder.glob(PART_GLOB))
        replaced = replaced_parts(found)  # a rewrite was interrupted before the old part was removed
        self.parts = [part for part in found if part not in replaced]
        if not self.parts:
            raise FileNotFoundError(
                f"no part files in {self.folder}: run `halp extract --model NAME` (or `dvc pull`) first"
            )
        hashes = set()
        for part in self.parts:
            with h5py.File(part, "r") as f:
                hashes.add(f.attrs["config_hash"])
        if len(hashes) > 1:
            raise ValueError(
                f"{self.folder} mixes parts of {len(hashes)} configurations; rerun `halp extract`"
            )
        manifest = self.folder / MANIFEST
        self.manifest: dict[str, Any] | None = json.loads(manifest.read_text()) if manifest.exists() else None

    @cached_property
    def attrs(self) -> dict[str, Any]:
        with h5py.File(self.parts[0], "r") as f:
            return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in f.attrs.items()}

    @property
    def layers(self) -> list[int]:
        return [int(k) for k in self.attrs["layers"]]

    @cached_property
    def _rows(self) -> pd.DataFrame:
        """Every stored row with its part and position there, in part order."""
        frames = []
        for i, part in enumerate(self.parts):
            with h5py.File(part, "r") as f:
                columns = {c: read_text(f[f"meta/{c}"]) for c in TEXT_COLUMNS if f"meta/{c}" in f}
                columns |= {c: f[f"meta/{c}"][()] for c in INT_COLUMNS if f"meta/{c}" in f}
            frame = pd.DataFrame(columns)
            if "gt_repaired" in frame:
                frame["gt_repaired"] = frame.gt_repaired.astype(bool)
            frame["_part"], frame["_row"] = i, np.arange(len(frame))
            frames.append(frame)
        rows = pd.concat(frames, ignore_index=True)
        if (twice := rows.sample_id[rows.sample_id.duplicated()]).any():
            raise ValueError(
                f"{self.folder} holds {twice.nunique()} sample ids in more than one row "
                f"(e.g. {', '.join(twice.unique()[:3])}), so a faulty run wrote it: delete the folder and "
                "run `halp extract` again"
            )
        if self.manifest is not None:
            position = {sample_id: n for n, sample_id in enumerate(self.manifest["order"])}
            rows = rows[rows.sample_id.isin(position)]
            rows = rows.iloc[np.argsort(rows.sample_id.map(position).to_numpy(), kind="stable")]
        return rows.reset_index(drop=True)

    @property
    def meta(self) -> pd.DataFrame:
        """One row per extracted sample, in the same order as every array `get` returns."""
        return self._rows.drop(columns=["_part", "_row"])

    @cached_property
    def errors(self) -> pd.DataFrame:
        """Samples whose latest attempt failed (a later run may have retried and extracted them)."""
        frames = []
        for part in self.parts:
            with h5py.File(part, "r") as f:
                frames.append(
                    pd.DataFrame(
                        {c: read_text(f[f"errors/{c}"]) for c in ERROR_COLUMNS if f"errors/{c}" in f}
                    )
                )
        errors = pd.concat(frames, ignore_index=True).drop_duplicates("sample_id", keep="last")
        return errors[~errors.sample_id.isin(self._rows.sample_id)].reset_index(drop=True)

    def get(self, representation: str, layer: int | None = None) -> np.ndarray:
        """[N, D] for `vision_only` (no layer), or [N, H] for `vision_token` / `query_token` at a layer.

        Other stored arrays (`first_token_logprobs`, `first_token_ids`) are read the same way, without layer.
        """
        layered = representation in REPRESENTATIONS[1:]
        if layered and layer not in self.layers:
            raise KeyError(f"layer {layer} was not extracted; stored layers: {self.layers}")
        if self._rows.empty:
            raise ValueError(f"{self.folder} holds no extracted samples, only errors: see .errors")
        chunks = []
        for i, part in enumerate(self.parts):
            rows = self._rows[self._rows._part == i]
            if rows.empty:
                continue
            with h5py.File(part, "r") as f:
                if representation not in f:
                    raise KeyError(f"no {representation!r} in {part.name}; stored: {sorted(f)}")
                dataset = f[representation]
                block = dataset[:, self.layers.index(layer)] if layered else dataset[()]
            chunks.append((rows.index.to_numpy(), block[rows._row.to_numpy()]))
        out = np.empty((len(self._rows), *chunks[0][1].shape[1:]), dtype=chunks[0][1].dtype)
        for where, values in chunks:
            out[where] = values
        return out


def open_embeddings(folder: Path | str) -> Embeddings:
    return Embeddings(folder)
