"""The modules a model has, named as `named_modules` names them, from its configuration alone: the model
is built on the meta device (no weights read, no memory used), so a user writing a module glob sees the
names without loading gigabytes, and a glob that names nothing is refused before any weights load."""

from __future__ import annotations

import difflib
import re
from fnmatch import fnmatchcase

import torch

from halp.config import ConfigError, ModelSettings
from halp.models.loading import read_config

_INDEX = re.compile(r"(?<=\.)\d+(?=\.|$)")  # a block's number inside a dotted name


def model_modules(settings: ModelSettings) -> dict[str, str]:
    """Every submodule's dotted name -> its class name, in the order the model holds them."""
    config, adapter = read_config(settings, whole_folder=False)
    with torch.device("meta"):
        model = adapter.auto_class.from_config(config)
    return {name: type(module).__name__ for name, module in model.named_modules() if name}


def as_pattern(name: str) -> str:
    """The name with each block number as `*`: "model.layers.3.mlp" -> "model.layers.*.mlp"."""
    return _INDEX.sub("*", name)


def patterns(modules: dict[str, str]) -> list[tuple[str, int, str]]:
    """Each distinct pattern once, in order: (pattern, how many modules it names, their classes)."""
    kinds: dict[str, list[str]] = {}
    for name, kind in modules.items():
        kinds.setdefault(as_pattern(name), []).append(kind)
    return [(pattern, len(each), ", ".join(dict.fromkeys(each))) for pattern, each in kinds.items()]


def matching(modules: dict[str, str], globs: list[str], model: str) -> dict[str, list[str]]:
    """Each glob's modules (`*` spans dots, as fnmatch's does); a glob that names none is refused with the
    patterns closest to it."""
    found = {glob: [name for name in modules if fnmatchcase(name, glob)] for glob in globs}
    if empty := [glob for glob, names in found.items() if not names]:
        known = [pattern for pattern, _, _ in patterns(modules)]
        lines = []
        for glob in empty:
            close = difflib.get_close_matches(glob, known, n=3, cutoff=0.5)
            lines.append(f"  - {glob!r} (close: {', '.join(close)})" if close else f"  - {glob!r}")
        raise ConfigError(
            f"module glob(s) naming no module of {model}:\n" + "\n".join(lines) + "\n"
            f"  fix: `halp modules --model {model}` lists every name, e.g. model.language_model.layers.*.mlp"
        )
    return found
