"""A model's folder of parts as one table: meta as a DataFrame, then arrays by name and layer. Embeddings:
any (representation, layer) as [N, H]; vision tokens: per-image statistics and, if saved, every token."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd

from halp.store.parts import (
    BANK,
    EMBEDDINGS,
    ERROR_COLUMNS,
    IMAGE_ATTENTION,
    LAYERED,
    LENS,
    MANIFEST,
    MODULES,
    VISION_TOKENS,
    Schema,
    module_array,
    open_part,
    part_files,
    read_text,
    replaced_parts,
)

log = logging.getLogger(__name__)
# Text as Python strings: with pyarrow installed pandas keeps str columns in Arrow, which refuses the lone
# surrogates a model's answer may hold (a byte-level tokenizer's cut character), and stored text must read.
TEXT = pd.StringDtype("python", na_value=np.nan)


class Parts:
    """All parts of one folder, rows in the sampled order (the manifest's), or part order if a run was
    interrupted before writing one."""

    schema: Schema = EMBEDDINGS
    command = "halp extract --model NAME"  # what writes such a folder

    def __init__(self, folder: Path | str):
        self.folder = Path(folder)
        found = part_files(self.folder)
        replaced = replaced_parts(found)  # a rewrite was interrupted before the old part was removed
        self.parts = [part for part in found if part not in replaced]
        if not self.parts:
            raise FileNotFoundError(
                f"no part files in {self.folder}: run `{self.rerun}` (or `dvc pull`) first"
            )
        hashes = set()
        for part in self.parts:
            with open_part(part) as f:
                hashes.add(f.attrs["config_hash"])
        if len(hashes) > 1:
            raise ValueError(
                f"{self.folder} mixes parts of {len(hashes)} configurations; rerun `{self.rerun}`"
            )
        manifest = self.folder / MANIFEST
        self.manifest: dict[str, Any] | None = json.loads(manifest.read_text()) if manifest.exists() else None
        if self.manifest is not None:
            self._check_parts(set(self.manifest["parts"]), {part.name for part in found})

    def _check_parts(self, listed: set[str], present: set[str]) -> None:
        """A finished folder holds exactly the parts its manifest lists: with one gone, its samples would
        be missing from every stage downstream without a word."""
        if listed == present:
            return
        missing, extra = sorted(listed - present), sorted(present - listed)
        found = [f"missing: {', '.join(missing)}"] if missing else []
        found += [f"not listed: {', '.join(extra)}"] if extra else []
        raise ValueError(
            f"{self.folder} does not hold the parts its {MANIFEST} lists ({'; '.join(found)}): the folder "
            "changed after its run finished. `dvc checkout` (or `dvc pull`) restores a tracked folder; "
            f"otherwise run `{self.rerun}` again, which keeps the parts "
            "present and extracts what is missing"
        )

    @property
    def rerun(self) -> str:
        """The command that writes this folder, as a message tells the user to run it."""
        return self.command.replace("NAME", self.folder.name)

    @cached_property
    def attrs(self) -> dict[str, Any]:
        with open_part(self.parts[0]) as f:
            return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in f.attrs.items()}

    @property
    def layers(self) -> list[int]:
        return [int(k) for k in self.attrs["layers"]]

    @cached_property
    def _rows(self) -> pd.DataFrame:
        """Every stored row with its part and position there, in part order."""
        frames = []
        for i, part in enumerate(self.parts):
            with open_part(part) as f:
                columns = {
                    c: pd.array(read_text(f[f"meta/{c}"]), dtype=TEXT)
                    for c in self.schema.text
                    if f"meta/{c}" in f
                }
                columns |= {c: f[f"meta/{c}"][()] for c in self.schema.ints if f"meta/{c}" in f}
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
                f"run `{self.rerun}` again"
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
            with open_part(part) as f:
                frames.append(
                    pd.DataFrame(
                        {c: read_text(f[f"errors/{c}"]) for c in ERROR_COLUMNS if f"errors/{c}" in f}
                    )
                )
        errors = pd.concat(frames, ignore_index=True).drop_duplicates("sample_id", keep="last")
        return errors[~errors.sample_id.isin(self._rows.sample_id)].reset_index(drop=True)

    def _blocks(self, name: str, read) -> list[tuple[np.ndarray, np.ndarray]]:
        """(row indices in `meta`, `read(dataset, rows of the part)`) for each part holding any row."""
        if self._rows.empty:
            raise ValueError(f"{self.folder} holds no extracted samples, only errors: see .errors")
        blocks = []
        for i, part in enumerate(self.parts):
            rows = self._rows[self._rows._part == i]
            if rows.empty:
                continue
            with open_part(part) as f:
                if name not in f:
                    raise KeyError(f"no {name!r} in {part.name}; stored: {sorted(f)}")
                blocks.append((rows.index.to_numpy(), read(f[name], rows._row.to_numpy())))
        return blocks

    def _gather(self, name: str, read) -> np.ndarray:
        """`read`'s rows of every part assembled into one array in `meta` order."""
        blocks = self._blocks(name, read)
        out = np.empty((len(self._rows), *blocks[0][1].shape[1:]), dtype=blocks[0][1].dtype)
        for where, values in blocks:
            out[where] = values
        return out


class Embeddings(Parts):
    """A model's extracted representations (`halp extract`)."""

    def get(self, representation: str, layer: int | None = None) -> np.ndarray:
        """[N, D] for `vision_only` (no layer), or [N, H] for `vision_token` / `query_token` at a layer;
        [N, heads] for `image_attention` and its companions at a layer, where they were extracted.

        Other stored arrays (`first_token_logprobs`, `first_token_ids`) are read the same way, without layer.
        """
        layered = representation in LAYERED
        if layered and layer not in self.layers:
            raise KeyError(f"layer {layer} was not extracted; stored layers: {self.layers}")

        def read(dataset: h5py.Dataset, rows: np.ndarray) -> np.ndarray:
            return (dataset[:, self.layers.index(layer)] if layered else dataset[()])[rows]

        try:
            return self._gather(representation, read)
        except KeyError:
            if representation not in IMAGE_ATTENTION:
                raise
            raise KeyError(
                f"{self.folder} was extracted without image attention: set models.{self.folder.name}."
                f"image_attention: true in params.yaml and run `{self.rerun}` again"
            ) from None

    @cached_property
    def modules(self) -> list[str]:
        """The names of the modules whose outputs were captured (`models.NAME.modules`)."""
        with open_part(self.parts[0]) as f:
            return list(f[MODULES]) if MODULES in f else []

    def module(self, name: str, token: str = "query_token") -> np.ndarray:
        """[N, D]: module `name`'s output at the query token (or at the vision token, "vision_token")."""
        position = ("vision_token", "query_token").index(token)
        if name not in self.modules:
            raise KeyError(
                f"{self.folder} holds no output of module {name!r} (captured: {self.modules or 'none'}): "
                f"add a glob naming it to models.{self.folder.name}.modules in params.yaml and run "
                f"`{self.rerun}`"
            )
        return self._gather(module_array(name), lambda dataset, rows: dataset[:, position][rows])


class ImageParts(Parts):
    """Parts with one row per image and arrays ragged over its image tokens."""

    @property
    def layer_names(self) -> list[str]:
        return ["input", *(str(k) for k in self.layers)]

    def per_image(self, name: str) -> list[np.ndarray]:
        """A ragged array, one [n_image_tokens, ...] block per image, in `meta` order."""
        out: list[np.ndarray] = [np.empty(0)] * len(self._rows)
        for i, part in enumerate(self.parts):
            mine = self._rows[self._rows._part == i]
            if mine.empty:
                continue
            with open_part(part) as f:
                counts = f["meta/n_image_tokens"][()]
                starts = np.concatenate([[0], np.cumsum(counts)])
                values = f[name][()]
            for where, row in zip(mine.index, mine._row, strict=True):
                out[where] = values[starts[row] : starts[row + 1]]
        return out


class LensReadings(ImageParts):
    """A model's lens readings (`halp lens`): per image, [n_image_tokens, 1 + n_layers, k] for each of
    latent/embedding/logit scores and rows/ids (and latent_layers: the bank layer of each bank row)."""

    schema = LENS
    command = "halp lens --model NAME"


class VisionTokens(ImageParts):
    """A model's vision tokens (`halp vision-tokens`): one row per image; its layers are the LM's input,
    then `layers` (blocks)."""

    schema = VISION_TOKENS
    command = "halp vision-tokens --model NAME"

    def statistics(self) -> pd.DataFrame:
        """One row per (image, layer): image_id, layer, and each statistic, in `meta`'s image order."""
        names = json.loads(self.attrs["statistics"])
        values = self._gather("statistics", lambda dataset, rows: dataset[()][rows])  # [N, 1 + L, stats]
        table = pd.DataFrame(values.reshape(-1, len(names)), columns=names)
        table.insert(0, "layer", self.layer_names * len(self._rows))
        table.insert(0, "image_id", np.repeat(self.meta.image_id.to_numpy(), len(self.layer_names)))
        return table

    def tokens(self, image_id: str) -> np.ndarray:
        """[1 + n_layers, n_image_tokens, H]: one image's vectors (saved only with lens.save_tensors)."""
        if not self.attrs.get("saved_tensors"):
            raise KeyError(f"{self.folder} holds statistics only: set lens.save_tensors: true and run again")
        matches = self._rows.index[self._rows.image_id == image_id]
        if not len(matches):
            raise KeyError(f"no image {image_id!r} in {self.folder}")
        row = self._rows.loc[matches[0]]
        with open_part(self.parts[row._part]) as f:
            counts = f["meta/n_image_tokens"][()]
            start = int(counts[: row._row].sum())
            return f["tokens"][start : start + int(counts[row._row])].transpose(1, 0, 2)


class Bank(Parts):
    """A model's contextual bank (`halp contextual-bank`): one row per kept token occurrence."""

    schema = BANK
    command = "halp contextual-bank --model NAME"

    def _layer(self, name: str, layer: int) -> np.ndarray:
        if layer not in self.layers:
            raise KeyError(f"layer {layer} is not in the bank; its layers: {self.layers}")
        index = self.layers.index(layer)
        return self._gather(name, lambda dataset, rows: dataset[:, index][rows])

    @property
    def dtype(self) -> np.dtype:
        """The vectors' storage type (`lens.bank_dtype`)."""
        with open_part(self.parts[0]) as f:
            return f["vectors"].dtype

    def vectors(self, layer: int) -> np.ndarray:
        """[N, H] L2-normalised vectors at one bank layer, rows aligned with `meta`."""
        return self._layer("vectors", layer)

    def norms(self, layer: int) -> np.ndarray:
        """[N] the vectors' norms before normalising."""
        return self._layer("norms", layer)

    def chunks(self, layer: int, rows: int = 65536) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(row numbers in `meta`, vectors [<= rows, H]) for the whole bank at one layer, read a block at
        a time: the bank never has to fit in memory."""
        index = self.layers.index(layer)
        for i, part in enumerate(self.parts):
            mine = self._rows[self._rows._part == i]
            numbers, local = mine.index.to_numpy(), mine._row.to_numpy()
            with open_part(part) as f:
                dataset = f["vectors"]
                for start in range(0, len(local), rows):
                    block = local[start : start + rows]
                    yield (
                        numbers[start : start + rows],
                        dataset[block.min() : block.max() + 1, index][block - block.min()],
                    )


def open_embeddings(folder: Path | str) -> Embeddings:
    return Embeddings(folder)


def open_finished(folder: Path | str, allow_incomplete: bool = False) -> Embeddings:
    """A folder whose extraction has finished, for the stages that build on it: without a manifest, a run
    is still going or was killed, and labels or probes of the samples it holds so far would pass as the
    whole. `allow_incomplete` reads them anyway, with a warning."""
    emb = Embeddings(folder)
    if emb.manifest is None:
        message = (
            f"{emb.folder} has no {MANIFEST}: its extraction has not finished (a run is still going, or "
            f"was killed) and it holds {len(emb.meta)} samples so far. Run "
            f"`{emb.rerun}` to finish it"
        )
        if not allow_incomplete:
            raise ValueError(f"{message}, or pass --allow-incomplete to read what it holds")
        log.warning("%s; reading it anyway (--allow-incomplete)", message)
    return emb


def open_vision_tokens(folder: Path | str) -> VisionTokens:
    return VisionTokens(folder)


def open_bank(folder: Path | str) -> Bank:
    return Bank(folder)


def open_lens(folder: Path | str) -> LensReadings:
    return LensReadings(folder)
