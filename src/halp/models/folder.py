"""Check a local model folder before a run, so a missing or cut-off file is named up front instead of
surfacing as a raw traceback after loading, or as every sample failing one by one.

Only what `from_pretrained` needs from a folder is checked, and only cheaply: files present, JSON that
parses, and safetensors whose header promises no more bytes than the file holds (a copy cut off mid-way).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from halp.config import ConfigError

# Any one of these is enough for each need; the hub's older layouts are accepted alongside ours.
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tiktoken.model")
TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")
TEMPLATE_HOLDERS = ("processor_config.json", "tokenizer_config.json")  # may carry "chat_template" inline
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class ModelFolderError(ConfigError):
    """A local model folder lacks a file the run needs, or holds a broken one."""


def check_model_folder(folder: Path) -> None:
    """Raise ModelFolderError naming the first missing or broken file; return if the folder looks whole."""
    config = _read_json(folder, "config.json", required=True)
    _require_one(folder, PROCESSOR_FILES, "the processor's settings (image size, patching)")
    for name in (*PROCESSOR_FILES, "tokenizer_config.json"):
        _read_json(folder, name, required=False)
    _require_one(folder, TOKENIZER_FILES, "the tokenizer")
    if not _has_chat_template(folder):
        raise _missing(
            folder,
            TEMPLATE_FILES,
            "the chat template that wraps each question (every sample would fail to render)",
        )
    for shard in _weight_files(folder, config):
        if shard.suffix == ".safetensors":
            _check_safetensors(shard)


def _read_json(folder: Path, name: str, required: bool) -> dict:
    path = folder / name
    if not path.is_file():
        if required:
            raise _missing(folder, (name,), "the model's configuration")
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelFolderError(
            f"model folder {folder}: {name} is not valid JSON ({err}); copy it again from the source"
        ) from err


def _require_one(folder: Path, names: tuple[str, ...], what: str) -> None:
    if not any((folder / name).is_file() for name in names):
        raise _missing(folder, names, what)


def _missing(folder: Path, names: tuple[str, ...], what: str) -> ModelFolderError:
    wanted = f"no {names[0]}" if len(names) == 1 else f"none of {', '.join(names)}"
    return ModelFolderError(
        f"model folder {folder} has {wanted}: {what}. Copy the whole folder again "
        "(or save it with model.save_pretrained and processor.save_pretrained)"
    )


def _has_chat_template(folder: Path) -> bool:
    if any((folder / name).is_file() for name in TEMPLATE_FILES):
        return True
    return any(_read_json(folder, name, required=False).get("chat_template") for name in TEMPLATE_HOLDERS)


def _weight_files(folder: Path, config: dict) -> list[Path]:
    """The weight files the folder's index names (each must exist), else its single weight file."""
    for index in WEIGHT_INDEXES:
        if (folder / index).is_file():
            shards = sorted(set(_read_json(folder, index, required=True).get("weight_map", {}).values()))
            for shard in shards:
                if not (folder / shard).is_file():
                    raise ModelFolderError(
                        f"model folder {folder}: {index} names {shard}, which is not there; "
                        "copy the missing shard"
                    )
            return [folder / shard for shard in shards]
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return [folder / name]
    raise _missing(folder, WEIGHT_INDEXES + WEIGHT_FILES, f"the {config.get('model_type', 'model')} weights")


def _check_safetensors(path: Path) -> None:
    """A safetensors file is an 8-byte header length, a JSON header, then the tensors' bytes: the header's
    largest end offset must fit in what the file holds."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(8)
        length = struct.unpack("<Q", head)[0] if len(head) == 8 else None
        if length is None or 8 + length > size:
            raise _broken(path, size, "its header is cut off")
        try:
            header = json.loads(handle.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise _broken(path, size, "its header is not valid JSON") from None
    ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    needed = 8 + length + max(ends, default=0)
    if needed > size:
        raise _broken(path, size, f"its tensors need {needed:,} bytes")


def _broken(path: Path, size: int, why: str) -> ModelFolderError:
    return ModelFolderError(
        f"model weights {path} are incomplete ({size:,} bytes; {why}): the copy or download was cut "
        "off. Copy or download this file again"
    )
