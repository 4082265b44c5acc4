"""Layer specs (ints, negative ints, fractions) resolved against a model's real depth."""

from __future__ import annotations

import logging
import math

log = logging.getLogger(__name__)


def resolve_layers(spec: list[int | float] | str, n_blocks: int, model: str = "the model") -> list[int]:
    """Block indices, sorted and unique. Layer k is the output of decoder block k (0-based).

    A float f in [0, 1] means block floor(f * n_blocks), capped at the last block, so
    [0, 0.25, 0.5, 0.75, 1.0] on 28 blocks gives [0, 7, 14, 21, 27]; "all" means every block.
    """
    if spec == "all":
        return list(range(n_blocks))
    resolved = []
    for layer in spec:
        if isinstance(layer, float):
            resolved.append(min(math.floor(layer * n_blocks), n_blocks - 1))
        elif -n_blocks <= layer < n_blocks:
            resolved.append(layer % n_blocks)
        else:
            raise ValueError(
                f"layer {layer} is out of range for {model}, which has {n_blocks} decoder blocks: "
                f"use 0..{n_blocks - 1}, -{n_blocks}..-1, or a fraction in [0, 1]"
            )
    unique = sorted(set(resolved))
    if len(unique) < len(resolved):
        log.warning("layers %s resolve to %s on %d blocks (duplicates merged)", spec, unique, n_blocks)
    return unique
