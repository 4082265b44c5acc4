"""What identifies a model's weights, cheaply and without loading them (so a DVC stage can ask every run).

A local folder is identified by its content (so a rebuilt or retrained model invalidates old embeddings),
a hub id by its revision.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

FULL_HASH_LIMIT = 1 << 30  # local folders up to 1 GiB are fingerprinted by content, larger ones by name+size


def model_fingerprint(source: str, revision: str | None) -> str:
    """What identifies the weights: a local folder's content (so a rebuilt tiny model invalidates old
    embeddings), or a hub id at its revision."""
    folder = Path(source)
    if not folder.is_dir():
        return f"{source}@{revision or 'main'}"
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    content = sum(p.stat().st_size for p in files) <= FULL_HASH_LIMIT
    for path in files:
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(path.read_bytes() if content else str(path.stat().st_size).encode())
    return f"sha256:{digest.hexdigest()}"


def write_fingerprint(source: str, revision: str | None, out: Path) -> Path:
    """A small file that changes exactly when the weights do: the DVC dependency of `extract@<model>`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"model": source, "revision": revision, "fingerprint": model_fingerprint(source, revision)}
    out.write_text(json.dumps(record, indent=1) + "\n")
    return out
