"""The embeddings store: immutable HDF5 parts per model, read back as one table.

from halp.store import open_embeddings
emb = open_embeddings("data/embeddings/qwen2_5_vl")
emb.meta                      # DataFrame, one row per sample
emb.get("query_token", 14)    # [N, H] at decoder block 14
"""

from halp.store.reader import (
    Bank,
    Embeddings,
    LensReadings,
    VisionTokens,
    open_bank,
    open_embeddings,
    open_finished,
    open_lens,
    open_vision_tokens,
)

__all__ = [
    "Bank",
    "Embeddings",
    "LensReadings",
    "VisionTokens",
    "open_bank",
    "open_embeddings",
    "open_finished",
    "open_lens",
    "open_vision_tokens",
]
