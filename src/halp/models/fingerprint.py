"""What identifies a model's weights, cheaply and without loading them (so a DVC stage can ask every run).

A local folder is identified by its content (so a rebuilt or retrained model invalidates old embeddings),
a hub id by its revision.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from halp.digests import DigestCache


def model_fingerprint(source: str, revision: str | None) -> str:
    """A local folder's content (every file's sha256 under its relative path), or a hub id at its
    revision."""
    folder = Path(source)
    if not folder.is_dir():
        return f"{source}@{revision or 'main'}"
    cache = DigestCache()
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(folder)}\0{cache.digest(path)}\n".encode())
    cache.save()
    return f"sha256:{digest.hexdigest()}"


def write_fingerprint(source: str, revision: str | None, out: Path) -> Path:
    """A small file that changes exactly when the weights do: the DVC dependency of `extract@<model>`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"model": source, "revision": revision, "fingerprint": model_fingerprint(source, revision)}
    out.write_text(json.dumps(record, indent=1) + "\n")
    return out
