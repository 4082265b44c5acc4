"""`halp extract`: the sampled CSV through one model into part files, resumable, losing nothing on faults."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm
from transformers import BatchFeature

from halp import versions
from halp.config import Params
from halp.data.images import load_image
from halp.digests import file_digest
from halp.environment import NUMERIC_PACKAGES, warn_if_unlocked
from halp.extract.distributed import Rank, process_group
from halp.extract.engine import BatchOutput, Extractor
from halp.extract.prefetch import prefetched
from halp.models.fingerprint import model_fingerprint
from halp.models.layers import resolve_layers
from halp.models.loading import load_model
from halp.models.modules import matching, model_modules
from halp.store.lock import writing
from halp.store.parts import (
    ARRAYS,
    EMBEDDINGS,
    SCHEMA_VERSION,
    PartBuffer,
    PartFolder,
    Schema,
    config_hash,
    module_array,
    non_finite,
    write_part,
)

log = logging.getLogger(__name__)
PACKAGES = ("halp", *NUMERIC_PACKAGES)


def _batches(rows: pd.DataFrame, size: int) -> Iterator[pd.DataFrame]:
    for start in range(0, len(rows), size):
        yield rows.iloc[start : start + size]


@dataclass
class PreparedBatch:
    """A batch ready for the model, or why it is not: made in the prefetch thread, used in the main one."""

    rows: pd.DataFrame  # the rows whose image loaded, in order
    unreadable: list[tuple[pd.Series, str]] = field(default_factory=list)  # (row, why its image failed)
    inputs: BatchFeature | None = None
    error: Exception | None = None  # the processor refused the batch

    def model_inputs(self) -> BatchFeature:
        if self.error is not None:
            raise self.error
        return self.inputs


def _meta(row: pd.Series, out: BatchOutput, i: int) -> dict:
    return {
        "sample_id": row.question_id,
        "image_id": row.image_name,
        "image_sha256": row.image_sha256,
        "question": row.question,
        "ground_truth": row.gt_answer,
        "gt_repaired": int(row.gt_repaired == "True"),  # the sampler repaired a ", "-joined ground truth
        "source": row.dataset,
        "category": row.category,
        "answer": out.answers[i],
        "vision_token_pos": int(out.vision_token_pos[i]),
        "query_token_pos": int(out.query_token_pos[i]),
        "seq_len": int(out.seq_len[i]),
        "n_image_tokens": int(out.n_image_tokens[i]),
        "n_generated_tokens": int(out.n_generated_tokens[i]),
    }


class ExtractionRun:
    """Feeds batches through the Extractor, isolating faulty samples, and writes a part every
    `checkpoint_interval` samples. What it extracts and stores is the embeddings; a subclass changes the
    folder, the layers, what one batch yields and the rows it stores (`halp.lens.run`)."""

    schema: Schema = EMBEDDINGS
    progress = ("extract", "sample")  # what the progress bar says: the task and its unit

    def __init__(self, params: Params, model_name: str, rank: Rank):
        self.name = model_name
        self.rank = rank
        self.settings = params.model(model_name)
        self.top_k = params.extract.top_k
        self.write_retry_seconds = params.extract.write_retry_seconds
        self.folder = self.folder_for(params, model_name)
        self.prefetch = params.extract.prefetch
        self.module_names = self._module_names()  # a glob naming nothing stops here, before weights load
        self.loaded = load_model(self.settings, rank.local)
        self.extractor = Extractor(
            self.loaded,
            resolve_layers(self._layer_spec(params), self.loaded.n_blocks, self.settings.model),
            self.settings.max_new_tokens,
            self.top_k,
            pin_memory=self.prefetch,
            image_attention=self.settings.image_attention,
            modules={name: self.loaded.model.get_submodule(name) for name in self.module_names},
        )
        columns = [module_array(name) for name in self.module_names]
        self.schema = replace(
            self.schema, arrays=(*self.schema.arrays, *columns), floats=(*self.schema.floats, *columns)
        )
        self.layers = self.extractor.layers
        self.config_hash = config_hash(self._identity())
        self.parts = PartFolder(self.folder, self.config_hash, rank.index, rank.world, self.schema)
        self.buffer = PartBuffer(self.schema)
        self.vision_dim = 0

    @classmethod
    def folder_for(cls, params: Params, model_name: str) -> Path:
        return params.extract.out_dir / model_name

    def _layer_spec(self, params: Params) -> list[int | float] | str:
        return self.settings.layers

    def _module_names(self) -> list[str]:
        """The modules whose outputs are kept at the two positions: every match of the entry's globs, from
        the model's configuration alone."""
        if not self.settings.modules:
            return []
        found = matching(model_modules(self.settings), self.settings.modules, self.name)
        return list(dict.fromkeys(name for names in found.values() for name in names))

    def _identity(self) -> dict:
        """What changes the numbers (weights, layers, dtypes, generation, schema), not batch or device."""
        return (
            {
                "schema_version": SCHEMA_VERSION,
                "code_version": versions.EXTRACTION,
                "weights": model_fingerprint(self.settings.model, self.settings.revision),
                "layers": self.layers,
                "dtype": self.settings.dtype,
                "storage_dtype": self.settings.storage_dtype,
                "max_new_tokens": self.settings.max_new_tokens,
                "top_k": self.top_k,
            }
            | ({"image_attention": versions.IMAGE_ATTENTION} if self.settings.image_attention else {})
            | ({"modules": self.module_names} if self.module_names else {})
        )

    def _attrs(self) -> dict:
        return {
            "schema_version": SCHEMA_VERSION,
            "model_name": self.name,
            "model_id": self.settings.model,
            "model_type": self.loaded.model_type,
            "revision": self.settings.revision or "",
            "dtype": self.settings.dtype,
            "storage_dtype": self.settings.storage_dtype,
            "device": str(self.loaded.device),
            "attn_implementation": self.loaded.attn_implementation,
            "layers": self.layers,
            "num_layers": self.loaded.n_blocks,
            "hidden_size": self.loaded.hidden_size,
            "vision_dim": self.vision_dim,
            "max_new_tokens": self.settings.max_new_tokens,
            "config_hash": self.config_hash,
            "package_versions": json.dumps({p: version(p) for p in PACKAGES}),
            "rank": self.rank.index,
            "world_size": self.rank.world,
        }

    def _flush(self) -> None:
        if len(self.buffer):
            path = self.parts.next_part()
            write_part(
                path, self.buffer, self._attrs(), self.settings.storage_dtype, self.write_retry_seconds
            )
            log.info(
                "wrote %s (%d samples, %d errors)", path.name, len(self.buffer.meta), len(self.buffer.errors)
            )
            self.buffer = PartBuffer(self.schema)

    def _compute(self, inputs: BatchFeature) -> Any:
        return self.extractor.run(inputs)

    def _rows(self, rows: pd.DataFrame, out: BatchOutput) -> Iterator[tuple[dict, dict[str, np.ndarray]]]:
        """(meta, arrays) of each stored row of a batch."""
        self.vision_dim = out.vision_only.shape[1]
        for i, (_, row) in enumerate(rows.iterrows()):
            arrays = {name: getattr(out, name)[i] for name in ARRAYS}
            arrays |= {name: a[i] for name, a in out.image_attention.items()}
            yield _meta(row, out, i), arrays | {module_array(name): a[i] for name, a in out.modules.items()}

    def _keep(self, rows: pd.DataFrame, out: Any) -> None:
        kept = list(self._rows(rows, out))
        bad = [
            m["sample_id"]
            for m, arrays in kept
            if not all(np.isfinite(arrays[n]).all() for n in self.schema.floats if n in arrays)
        ]
        if bad:  # at once, not when the part is written: broken weights stop the run at its first batch
            self._flush()  # the earlier batches' rows are finished work
            raise non_finite("states", bad)
        for meta, arrays in kept:
            self.buffer.add(meta, arrays)
            if len(self.buffer) >= self.settings.checkpoint_interval:
                self._flush()

    def _prepare(self, rows: pd.DataFrame) -> PreparedBatch:
        """Images loaded and the processor run; touches nothing shared, so it may run in the background."""
        images, good, unreadable = [], [], []
        for _, row in rows.iterrows():
            try:
                images.append(load_image(row.image_path))
                good.append(row)
            except (FileNotFoundError, ValueError) as err:
                unreadable.append((row, str(err)))
        batch = PreparedBatch(pd.DataFrame(good), unreadable)
        if good:
            try:
                batch.inputs = self.extractor.prepare(images, list(batch.rows.question))
            except Exception as err:
                batch.error = err
        return batch

    def _extract(self, batch: PreparedBatch) -> None:
        """One batch; if it fails as a whole, each sample alone, so one bad sample costs only itself.

        Only the model's work counts as a sample's failure: writing a part happens outside the `try`,
        so a disk error stops the run instead of blaming (and duplicating) the samples.
        """
        for row, message in batch.unreadable:
            log.warning("%s: %s", row.question_id, message)
            self.buffer.fail(row.question_id, "load_image", message, "data", row.image_sha256)
        rows = batch.rows
        if rows.empty:
            return
        try:
            out = self._compute(batch.model_inputs())
        except Exception as err:
            if len(rows) == 1:
                log.warning("%s: extraction failed: %s", rows.iloc[0].question_id, err)
                self.buffer.fail(
                    rows.iloc[0].question_id, "extract", f"{type(err).__name__}: {err}", "runtime"
                )
                return
            log.warning("batch failed (%s); retrying its samples one by one", err)
            for i in range(len(rows)):
                self._extract(self._prepare(rows.iloc[i : i + 1]))
            return
        self._keep(rows, out)

    def _drop_outdated_rows(self, samples: pd.DataFrame) -> None:
        """Rows of samples no longer in the sample, or extracted from an image whose content has changed
        since, leave the parts (the folder holds what this sample gives, nothing DVC would cache beside)."""
        extracted = self.parts.extracted()
        current = dict(zip(samples.question_id, samples.image_sha256, strict=True))
        gone = extracted.keys() - current.keys()
        changed = {sid for sid, digest in extracted.items() if current.get(sid, digest) != digest}
        if gone:
            log.warning("%d extracted samples are no longer in the sample: removing their rows", len(gone))
        if changed:
            log.warning(
                "%d samples' images changed since they were extracted: extracting them again", len(changed)
            )
        if gone | changed:
            self.parts.drop_rows(gone | changed)

    def _todo(self, shard: pd.DataFrame) -> pd.DataFrame:
        """The shard minus extracted samples and data errors whose image is unchanged; runtime errors
        (out of memory, a full disk) and data errors whose image changed are tried again."""
        extracted, failures = self.parts.extracted(), self.parts.failures()
        settled = {
            row.question_id
            for row in shard[shard.question_id.isin(failures)].itertuples()
            if failures[row.question_id].get("kind", "data") == "data"
            and failures[row.question_id].get("input_hash", "") == row.image_sha256
        }
        todo = shard[~shard.question_id.isin(extracted.keys() | settled)]
        log.info(
            "%s rank %d/%d: %d samples, %d already done, %d earlier failures retried, %d to extract",
            *(self.name, self.rank.index, self.rank.world, len(shard), len(shard) - len(todo)),
            todo.question_id.isin(failures).sum(),
            len(todo),
        )
        return todo

    def run(self, samples: pd.DataFrame, remove_damaged: bool = False) -> None:
        """This process's shard: every world-th sample from its rank on, minus what any part holds."""
        # The images as they are now (the sampled CSV's hashes may predate a replaced file).
        samples = samples.assign(image_sha256=samples.image_path.map(functools.cache(file_digest)))
        if self.rank.is_main:
            self.parts.clean(remove_damaged)
            self._drop_outdated_rows(samples)
        self.rank.barrier()
        todo = self._todo(samples.iloc[self.rank.index :: self.rank.world])
        task, unit = self.progress
        with tqdm(total=len(todo), desc=f"{task} {self.name}", unit=unit) as progress:
            batches = (self._prepare(rows) for rows in _batches(todo, self.settings.batch_size))
            for batch in prefetched(batches, self.prefetch):
                self._extract(batch)
                progress.update(len(batch.rows) + len(batch.unreadable))
        self._flush()
        self.rank.barrier()
        if self.rank.is_main:
            self.parts.write_manifest(self.name, list(samples.question_id))


def read_samples(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"sampled CSV {path} not found: run `halp sample` first")
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def extract(params: Params, model_name: str, wait: bool = False, remove_damaged: bool = False) -> Path:
    params.model(model_name)  # unknown names fail before any model is loaded
    samples = read_samples(params.data.out).head(params.model(model_name).max_samples)
    folder, rank = ExtractionRun.folder_for(params, model_name), Rank.from_env()
    with writing(folder, wait, rank.is_main), process_group(rank) as rank:
        if rank.is_main:
            warn_if_unlocked()
        run = ExtractionRun(params, model_name, rank)
        run.run(samples, remove_damaged)
    return run.folder
