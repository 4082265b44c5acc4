"""Prepare the next batch (image decoding, the processor) in a background thread while the model works
on this one. Off by default: on a CPU both compete for the same cores (slower here, measured); on a GPU
the host-side preparation can hide behind the device's work."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
_END = object()


def prefetched(items: Iterator[T], enabled: bool) -> Iterator[T]:
    """`items` in order; when enabled, each is computed in a background thread while the caller works on
    the one before it (one ahead, so at most two batches are in memory)."""
    if not enabled:
        yield from items
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="halp-prefetch") as pool:
        pending = pool.submit(next, items, _END)
        while (item := pending.result()) is not _END:
            pending = pool.submit(next, items, _END)
            yield item
