"""Image attention as the probes read it: one layout for stored embeddings and a live prefill alike, so a
guard fitted on stored features reads the same ones before the answer."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from halp.store.parts import IMAGE_ATTENTION

# the grid's cells built from image attention (where it was extracted)
ATTENTION_CELLS = ("image_attention", "image_attention_all", "query_token+image_attention")


def stacked(arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    """[N, L, 4 x heads] from the IMAGE_ATTENTION arrays [N, L, heads]: at each layer, the query token's
    share of attention on the image and its entropy there per head, then the vision token's."""
    return np.concatenate([np.asarray(arrays[name], np.float32) for name in IMAGE_ATTENTION], axis=-1)


def attention_cell(
    representation: str, attention: np.ndarray, index: int | None, query: np.ndarray | None = None
) -> np.ndarray:
    """A cell's features from `attention` [N, L, 4 x heads] over every extracted layer: the layer at
    position `index` (image_attention), all layers concatenated (image_attention_all, DHCP's input), or
    those beside the query token `query` [N, H] at the cell's layer (query_token+image_attention)."""
    if representation == "image_attention":
        return attention[:, index]
    every = attention.reshape(len(attention), -1)
    return every if representation == "image_attention_all" else np.concatenate([query, every], axis=1)
