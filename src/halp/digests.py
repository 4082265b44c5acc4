"""Content digests (sha256) of files: what identifies an image or a model's weights.

A digest is cached by the file's (size, mtime, inode), as DVC does, so a 15 GB checkpoint is read once per
change, not on every `dvc repro`; a file rewritten in place gets a new mtime and is read again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes, "" if it cannot be read: missing, a folder, a link loop, no permission (an
    unreadable input is a state too; whoever reads it says what is wrong)."""
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError:
        return ""


def cache_dir() -> Path:
    """Where halp keeps what saves time and decides no result: $XDG_CACHE_HOME/halp (~/.cache/halp)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "halp"


def cache_path() -> Path:
    return cache_dir() / "file-sha256.json"


class DigestCache:
    """Digests of large files, trusted while the file's size, mtime and inode are unchanged."""

    def __init__(self) -> None:
        try:
            self.known: dict[str, list] = json.loads(cache_path().read_text())
        except (OSError, ValueError):
            self.known = {}

    def digest(self, path: Path) -> str:
        stat = path.stat()
        key, stamp = str(path.resolve()), [stat.st_size, stat.st_mtime_ns, stat.st_ino]
        cached = self.known.get(key)
        if cached is None or cached[0] != stamp:
            self.known[key] = [stamp, file_digest(path)]
        return self.known[key][1]

    def save(self) -> None:
        """Best effort: a cache that cannot be written costs only time."""
        path = cache_path()
        temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary.write_text(json.dumps(self.known))
            os.replace(temporary, path)
        except OSError as err:
            log.debug("digest cache not saved (%s)", err)
