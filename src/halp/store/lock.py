"""One writer per part folder: two runs on one folder (a job submitted twice) would remove each other's
temporary parts and number theirs alike, losing and duplicating samples.

The lock is `flock` on a file beside the folder (`.NAME.lock`, outside what DVC hashes), so the kernel
releases it when its holder ends, even by SIGKILL: a stale lock never blocks. It works across the nodes
of a shared filesystem that supports locks (NFS does). The file names its holder for the refusal.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from halp.store.parts import writing_output

log = logging.getLogger(__name__)
HELD = "HALP_HOLDS_LOCK"  # set by a launcher holding the lock for the workers it starts


class FolderBusy(RuntimeError):
    """Another run is writing this folder."""


def lock_path(folder: Path) -> Path:
    return folder.parent / f".{folder.name}.lock"


@contextmanager
def writing(folder: Path, wait: bool = False, main: bool = True) -> Iterator[None]:
    """Hold `folder`'s lock while the body writes it; refuse (or with `wait`, wait) if another run does.
    Of a data-parallel run's processes the main one takes it (`main`), unless its launcher holds it.
    The folder is resolved first: a path through a symlink is the folder it points at, and its lock."""
    folder = folder.resolve()
    if not main or os.environ.get(HELD) == str(folder):
        yield
        return
    path = lock_path(folder)
    with writing_output(path, "nothing was written (a run locks its folder with this file first)"):
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(path, "a+")  # noqa: SIM115 (held open, and closed, below)
    with lock as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = path.read_text().strip() or "another process"
            if not wait:
                raise FolderBusy(
                    f"{folder} is being written by {holder}; two runs on one folder would lose and "
                    "duplicate samples. Let that run finish (or stop it), or pass --wait to start after it"
                ) from None
            log.warning("%s is being written by %s: waiting for it to finish (--wait)", folder, holder)
            fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        f.truncate()
        started = datetime.now(UTC).isoformat(timespec="seconds")
        f.write(f"pid {os.getpid()} on {socket.gethostname()} since {started}: {' '.join(sys.argv)}\n")
        f.flush()
        try:
            yield
        finally:
            f.seek(0)
            f.truncate()
