"""Immutable HDF5 part files: written under a temporary name, renamed when complete, never modified."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2  # 2: text as UTF-8 bytes; errors carry their kind and input hash
REPRESENTATIONS = ("vision_only", "vision_token", "query_token")
ARRAYS = (*REPRESENTATIONS, "first_token_logprobs", "first_token_ids")
# Stored only when a model's `image_attention` is on, each [n, n_layers, heads]: the query token's share
# of attention on the image tokens and the entropy of its attention over them, then the same for the
# vision token.
IMAGE_ATTENTION = (
    "image_attention",
    "image_attention_entropy",
    "vision_token_image_attention",
    "vision_token_image_attention_entropy",
)
LAYERED = (*REPRESENTATIONS[1:], *IMAGE_ATTENTION)  # read one layer at a time
MODULES = "modules"  # the group of the modules captured by `models.NAME.modules`, each [n, 2, D]


def module_array(name: str) -> str:
    """Where a captured module's outputs at (vision token, query token) are stored."""
    return f"{MODULES}/{name}"


TEXT_COLUMNS = (
    "sample_id", "image_id", "image_sha256", "question", "ground_truth", "source", "category", "answer"
)  # fmt: skip
INT_COLUMNS = (
    "gt_repaired", "vision_token_pos", "query_token_pos", "seq_len", "n_image_tokens", "n_generated_tokens"
)  # fmt: skip
ERROR_COLUMNS = ("sample_id", "stage", "message", "kind", "input_hash")


@dataclass(frozen=True)
class Schema:
    """What a part holds per row: text and integer columns, and arrays. A stacked array has one entry per
    row; a ragged one has `ragged_rows` (an integer column) entries per row, concatenated on axis 0. Arrays
    in `floats` are stored in the storage dtype, checked for overflow."""

    text: tuple[str, ...]
    ints: tuple[str, ...]
    arrays: tuple[str, ...]
    floats: tuple[str, ...] = ()
    ragged: tuple[str, ...] = ()
    ragged_rows: str = ""


EMBEDDINGS = Schema(
    TEXT_COLUMNS, INT_COLUMNS, (*ARRAYS, *IMAGE_ATTENTION), floats=(*REPRESENTATIONS, *IMAGE_ATTENTION)
)
# One row per image (its sample_id is the image's name): statistics [1 + n_layers, n_statistics] and, when
# asked for, every image token's vector, [n_image_tokens, 1 + n_layers, H] per image, concatenated.
VISION_TOKENS = Schema(
    text=("sample_id", "image_id", "image_sha256", "question"),
    ints=("n_image_tokens", "grid_t", "grid_h", "grid_w"),
    arrays=("statistics", "tokens"),
    floats=("tokens",),
    ragged=("tokens",),
    ragged_rows="n_image_tokens",
)
# One row per image: each lens's k best readings of every image token at each layer, [n_image_tokens,
# 1 + n_layers, k] per image, concatenated (`halp.lens.lenses.Readings`).
LENS_ARRAYS = (
    "latent_scores",
    "latent_rows",
    "latent_layers",
    "embedding_scores",
    "embedding_ids",
    "logit_scores",
    "logit_ids",
)
LENS = Schema(
    text=VISION_TOKENS.text,
    ints=VISION_TOKENS.ints,
    arrays=LENS_ARRAYS,
    ragged=LENS_ARRAYS,
    ragged_rows="n_image_tokens",
)
# One row per chosen token occurrence of a corpus (its sample_id is "sentence:position"): the residual
# stream at each bank layer, L2-normalised ([n_layers, H], float16 by default), and its norms [n_layers].
BANK = Schema(
    text=("sample_id", "token_string"),
    ints=("token_id", "sentence", "position"),
    arrays=("vectors", "norms"),
    floats=("vectors",),
)
PART_GLOB = "part-*.h5"
# What halp names a part (five digits or more); a copy such as "part-00003 (copy).h5" is not one.
PART_NAME = re.compile(r"part-\d{5,}\.h5")
MANIFEST = "manifest.json"
ROWS_PER_CHUNK = 256

_utf8 = h5py.vlen_dtype(np.uint8)


def part_files(folder: Path) -> list[Path]:
    """The folder's parts, by name; another file that looks like one is left alone, with a warning."""
    found = sorted(folder.glob(PART_GLOB))
    for other in (path for path in found if not PART_NAME.fullmatch(path.name)):
        log.warning("ignoring %s: not a part's name (part-NNNNN.h5); move it out of %s", other.name, folder)
    return [path for path in found if PART_NAME.fullmatch(path.name)]


@contextmanager
def open_part(path: Path) -> Iterator[h5py.File]:
    """A part for reading, or an error that names the file and what to do: a damaged part can be removed
    (its samples are computed again), a file halp did not write is never touched."""
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        _refuse_foreign(path)
        raise ValueError(
            f"{path} cannot be read ({err}): it was cut short or damaged. Remove it, or add --remove-damaged "
            "to the command that writes this folder (halp extract, contextual-bank, vision-tokens or lens), "
            "and run again: its samples are computed again, the other parts are kept"
        ) from None
    with f:
        if "config_hash" not in f.attrs:
            raise ValueError(
                f"{path} was not written by halp (it has no config_hash) and is left as it is: move it out "
                f"of {path.parent}"
            )
        yield f


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"  # the first bytes of every part halp writes, even one cut short


def _refuse_foreign(path: Path) -> None:
    """A file named like a part that will not open and is no HDF5 file at all is not a damaged part but
    someone else's file: refused, never removed (an empty one holds nothing to lose)."""
    with path.open("rb") as f:
        head = f.read(len(HDF5_SIGNATURE))
    if head and head != HDF5_SIGNATURE:
        raise ValueError(
            f"{path} is named like a part but is no HDF5 file (it begins {head!r}): halp did not write it "
            f"and --remove-damaged leaves it alone. Move it out of {path.parent} and run again"
        )


def _damaged(path: Path) -> bool:
    """A part that will not open: cut short or corrupt."""
    try:
        h5py.File(path, "r").close()
        return False
    except OSError:
        _refuse_foreign(path)
        return True


def config_hash(identity: dict[str, Any]) -> str:
    """A short stable digest of what changes a folder's numbers: parts of another hash are stale."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


class PartWriteError(RuntimeError):
    """An output could not be written (a full or read-only disk, no permission; a part even after retries):
    the run stops with one message saying where, why and what is kept."""


def _free_space(folder: Path) -> str:
    try:
        return f"{shutil.disk_usage(folder).free / 2**20:.1f} MiB free there"
    except OSError:
        return "free space unknown"


@contextmanager
def writing_output(path: Path, kept: str) -> Iterator[None]:
    """The body's OSErrors (a full or read-only disk, no permission) as one PartWriteError naming `path`
    and saying what is `kept`."""
    try:
        yield
    except OSError as err:
        raise PartWriteError(
            f"could not write {path} ({err.strerror or err}; {_free_space(path.parent)}). Free space, make "
            f"the folder writable (or mount it so), or write elsewhere; then run the same command again: "
            f"{kept}"
        ) from err


@dataclass
class PartBuffer:
    """Rows (and failed samples) waiting to be written as the next part. An array of the schema that no
    row carries (vision tokens' full tensors, when not asked for) is not written."""

    schema: Schema = EMBEDDINGS
    meta: list[dict[str, Any]] = field(default_factory=list)
    arrays: dict[str, list[np.ndarray]] = field(default_factory=dict)
    errors: list[dict[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.meta) + len(self.errors)

    def add(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.meta.append(meta)
        for name, values in arrays.items():
            self.arrays.setdefault(name, []).append(values)

    def fail(self, sample_id: str, stage: str, message: str, kind: str, input_hash: str = "") -> None:
        """kind "data": stands until the input (`input_hash`) changes; "runtime": retried next run."""
        self.errors.append(
            {
                "sample_id": sample_id,
                "stage": stage,
                "message": message,
                "kind": kind,
                "input_hash": input_hash,
            }
        )


def write_text(group: h5py.Group, name: str, values: Sequence[str]) -> None:
    """Any string a model can produce, byte-exact: HDF5 strings end at a NUL, so text is stored as UTF-8
    bytes, lone surrogates (from byte-level decoding) passed through."""
    data = np.empty(len(values), dtype=object)
    data[:] = [np.frombuffer(v.encode("utf-8", "surrogatepass"), dtype=np.uint8) for v in values]
    group.create_dataset(name, data=data, dtype=_utf8)


def read_text(dataset: h5py.Dataset) -> list[str]:
    if h5py.check_vlen_dtype(dataset.dtype) == np.uint8:
        return [v.tobytes().decode("utf-8", "surrogatepass") for v in dataset[()]]
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in dataset[()]]  # schema 1


class NonFiniteStates(ValueError):
    """The model computed NaN or inf: stored, they would poison every statistic and probe downstream."""


def _listed(ids: Sequence[str]) -> str:
    return ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")


def non_finite(what: str, bad: Sequence[str]) -> NonFiniteStates:
    """The error naming the samples whose `what` hold NaN or inf, with the two usual causes."""
    return NonFiniteStates(
        f"the model computed {what} that are not finite (NaN or inf) for {len(bad)} sample(s): "
        f"{_listed(bad)}. In float16 an activation overflowed inside the model (set dtype: bfloat16 or "
        "float32 for this model in params.yaml), or its weights hold NaN (check the checkpoint). Nothing of "
        "these samples is stored; the parts already written are kept"
    )


def _float_for_storage(name: str, values: np.ndarray, dtype: str, ids: list[str]) -> np.ndarray:
    """`values` in the storage dtype; a value that is not finite, or would become infinite, is refused."""
    if bad := sorted({ids[i] for i in np.argwhere(~np.isfinite(values))[:, 0]}):
        raise non_finite(name, bad)
    with np.errstate(over="ignore"):
        stored = values.astype(dtype)
    if bad := sorted({ids[i] for i in np.argwhere(~np.isfinite(stored))[:, 0]}):
        raise OverflowError(
            f"{name} of {len(bad)} sample(s) overflows {dtype} (residual streams have outliers): "
            f"{_listed(bad)}. Set storage_dtype: float32 for this model in params.yaml"
        )
    return stored


def _fill(f: h5py.File, buffer: PartBuffer, attrs: dict[str, Any], storage_dtype: str) -> None:
    schema = buffer.schema
    for key, value in attrs.items():
        f.attrs[key] = value
    f.attrs["n_samples"] = len(buffer.meta)
    meta = f.create_group("meta")
    for column in schema.text:
        write_text(meta, column, [str(m[column]) for m in buffer.meta])
    for column in schema.ints:
        meta.create_dataset(column, data=np.array([m[column] for m in buffer.meta], dtype=np.int64))
    ids = [m["sample_id"] for m in buffer.meta]
    owners = [i for i, m in enumerate(buffer.meta) for _ in range(m.get(schema.ragged_rows, 0))]
    for name in schema.arrays:
        if not buffer.arrays.get(name):
            continue
        ragged = name in schema.ragged
        values = (np.concatenate if ragged else np.stack)(buffer.arrays[name])
        if name in schema.floats:
            values = _float_for_storage(
                name, values, storage_dtype, [ids[i] for i in owners] if ragged else ids
            )
        # One chunk holds one layer of up to ROWS_PER_CHUNK rows: reading a layer is a few big reads.
        chunks = (min(len(values), ROWS_PER_CHUNK), *(1 for _ in values.shape[1:-1]), values.shape[-1])
        f.create_dataset(name, data=values, chunks=chunks if len(values) else None)
    errors = f.create_group("errors")
    for column in ERROR_COLUMNS:
        write_text(errors, column, [e[column] for e in buffer.errors])


def read_part(path: Path, schema: Schema = EMBEDDINGS) -> tuple[dict[str, Any], PartBuffer]:
    """A part's attrs and rows, as written: enough to write it again without some rows."""
    buffer = PartBuffer(schema)
    with open_part(path) as f:
        attrs = {key: value for key, value in f.attrs.items() if key != "n_samples"}
        columns = {c: read_text(f[f"meta/{c}"]) for c in schema.text} | {
            c: f[f"meta/{c}"][()].tolist() for c in schema.ints
        }
        arrays = {name: f[name][()] for name in schema.arrays if name in f}
        buffer.errors = [
            dict(zip(ERROR_COLUMNS, row, strict=True))
            for row in zip(*(read_text(f[f"errors/{c}"]) for c in ERROR_COLUMNS), strict=True)
        ]
    counts = columns.get(schema.ragged_rows, [])
    for name in schema.ragged:
        if name in arrays:
            arrays[name] = np.split(arrays[name], np.cumsum(counts)[:-1])
    for i in range(len(columns["sample_id"])):
        buffer.add({c: values[i] for c, values in columns.items()}, {n: a[i] for n, a in arrays.items()})
    return attrs, buffer


def encode_part(buffer: PartBuffer, attrs: dict[str, Any], storage_dtype: str) -> bytes:
    """The whole part as HDF5 bytes, built in memory: a failing disk then meets plain bytes, never a
    half-written HDF5 library state, and the size needed is known before writing."""
    image = io.BytesIO()
    with h5py.File(image, "w") as f:
        _fill(f, buffer, attrs, storage_dtype)
    return image.getvalue()


def write_atomically(path: Path, data: bytes | memoryview) -> None:
    """`data` at `path` whole or not at all: a temporary file, synced, then renamed over it."""
    temporary = path.with_name(path.name + ".tmp")
    try:
        with open(temporary, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_part(
    path: Path,
    buffer: PartBuffer,
    attrs: dict[str, Any],
    storage_dtype: str,
    retry_seconds: Sequence[float] = (),
) -> None:
    """Write buffer to `path` atomically: a reader sees the whole part or none of it.

    A failed write (disk full, quota, I/O error) is tried again after each of `retry_seconds`, then
    raises PartWriteError saying what, where, how much space it needed and how to go on.
    """
    data = encode_part(buffer, attrs, storage_dtype)
    for wait in [*retry_seconds, None]:
        try:
            write_atomically(path, data)
            return
        except OSError as err:
            if wait is None:
                raise PartWriteError(_write_failure(path, len(data), len(buffer), err)) from err
            log.warning("could not write %s (%s); trying again in %g s", path.name, err.strerror or err, wait)
            time.sleep(wait)


def _write_failure(path: Path, size: int, samples: int, err: OSError) -> str:
    return (
        f"could not write {path} ({size / 2**20:.1f} MiB, {samples} samples; {_free_space(path.parent)}): "
        f"{err.strerror or err}. Free space or fix the folder's permissions (or move extract.out_dir), "
        "then run `halp extract` again: finished parts are kept, and the samples of this part are "
        "extracted again."
    )


def replaced_parts(parts: list[Path]) -> list[Path]:
    """Parts that a rewritten part replaces (still there when a run was killed mid-rewrite)."""
    names = set()
    for part in parts:
        with open_part(part) as f:
            names.add(str(f.attrs.get("replaces", "")))
    return [part for part in parts if part.name in names]


class PartFolder:
    """A model's folder of parts: finds finished work, drops stale parts, names the next part.

    Several processes may write into one folder: process `rank` of `world` numbers its parts in its own
    residue class modulo `world`, so names never collide, whatever ran before.
    """

    def __init__(
        self, folder: Path, config_hash: str, rank: int = 0, world: int = 1, schema: Schema = EMBEDDINGS
    ):
        self.folder = folder
        self.config_hash = config_hash
        self.rank, self.world = rank, world
        self.schema = schema
        self._next: int | None = None

    def parts(self) -> list[Path]:
        return part_files(self.folder)

    def clean(self, remove_damaged: bool = False) -> None:
        """Remove leftovers of killed runs, the old manifest and other configs' parts (one process only);
        with `remove_damaged`, also parts that cannot be read (cut short), so their samples run again."""
        try:
            self._clean(remove_damaged)
        except OSError as err:  # a read-only mount, no permission: before anything is computed
            raise PartWriteError(
                f"cannot change {self.folder} ({err.strerror or err}): a run removes its leftovers and the "
                "old manifest before it writes. Fix the folder's permissions (or mount it writable, or move "
                "the output folder in params.yaml), then run the same command again: nothing was lost"
            ) from err

    def _clean(self, remove_damaged: bool) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        for leftover in self.folder.glob("*.tmp"):
            log.info("removing incomplete %s left by an interrupted run", leftover.name)
            leftover.unlink()
        if remove_damaged:
            for damaged in (part for part in self.parts() if _damaged(part)):
                log.warning(
                    "removing %s (--remove-damaged): it cannot be read; its samples run again", damaged
                )
                damaged.unlink()
        (self.folder / MANIFEST).unlink(missing_ok=True)
        for replaced in replaced_parts(self.parts()):
            log.info("removing %s: a rewritten copy without its stale rows replaces it", replaced.name)
            replaced.unlink()
        for part in self.parts():
            with open_part(part) as f:
                stale = f.attrs.get("config_hash") != self.config_hash
            if stale:
                log.warning("removing %s: it was extracted with another configuration", part.name)
                part.unlink()

    def extracted(self) -> dict[str, str]:
        """Sample id -> the sha256 of the image it was extracted from, for every extracted sample."""
        done: dict[str, str] = {}
        for part in self.parts():
            with open_part(part) as f:
                hashes = read_text(f["meta/image_sha256"]) if "meta/image_sha256" in f else None
                ids = read_text(f["meta/sample_id"])
            done.update(zip(ids, hashes or [""] * len(ids), strict=True))
        return done

    def drop_rows(self, sample_ids: set[str]) -> None:
        """Rewrite every part holding these samples without them (one process only). The rewrite names
        the part it replaces, so a kill between writing it and removing the old one loses nothing: the
        reader ignores the old part and the next `clean` removes it."""
        for part in self.parts():
            with open_part(part) as f:
                if sample_ids.isdisjoint(read_text(f["meta/sample_id"])):
                    continue  # only the parts that hold them are read whole
            attrs, buffer = read_part(part, self.schema)
            keep = [i for i, m in enumerate(buffer.meta) if m["sample_id"] not in sample_ids]
            kept = PartBuffer(self.schema, errors=buffer.errors)
            for i in keep:
                kept.add(buffer.meta[i], {name: rows[i] for name, rows in buffer.arrays.items()})
            if not kept:
                part.unlink()
                log.info("%s: all %d rows stale, removed", part.name, len(buffer.meta))
                continue
            rewrite = self.next_part()
            write_part(rewrite, kept, attrs | {"replaces": part.name}, str(attrs["storage_dtype"]))
            part.unlink()
            log.info(
                "%s: %d stale rows dropped, rewritten as %s",
                part.name,
                len(buffer.meta) - len(keep),
                rewrite.name,
            )

    def failures(self) -> dict[str, dict[str, str]]:
        """The latest recorded failure of each sample id (parts of later runs have higher numbers)."""
        latest: dict[str, dict[str, str]] = {}
        for part in self.parts():
            with open_part(part) as f:
                columns = {c: read_text(f[f"errors/{c}"]) for c in ERROR_COLUMNS if f"errors/{c}" in f}
            for row in zip(*columns.values(), strict=True):
                failure = dict(zip(columns, row, strict=True))
                latest[failure["sample_id"]] = failure
        return latest

    def next_part(self) -> Path:
        if self._next is None:
            start = max((int(p.stem.split("-")[1]) for p in self.parts()), default=-1) + 1
            self._next = start + (self.rank - start) % self.world
        path = self.folder / f"part-{self._next:05d}.h5"
        self._next += self.world
        return path

    def write_manifest(self, model: str, order: list[str]) -> None:
        """Record the parts and the sampled order; the reader presents rows in this order. Refused while
        a sample of the order has neither a stored row nor a recorded error: a part removed while the run
        went would otherwise be finished work that silently lacks its rows."""
        accounted = set(self.extracted()) | set(self.failures())
        if unaccounted := [sample_id for sample_id in order if sample_id not in accounted]:
            raise PartWriteError(
                f"{len(unaccounted)} of {len(order)} samples of {self.folder} have neither a stored row nor "
                f"a recorded error (e.g. {', '.join(unaccounted[:3])}): a part was removed while the run "
                "went. No manifest was written, so nothing downstream reads the folder as whole; run the "
                "same command again to extract them"
            )
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
