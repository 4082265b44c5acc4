"""Per-model summary statistics of the extracted representations, written as DVC metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from halp.jsonfile import write_json
from halp.store.reader import Embeddings


def _stats(values: np.ndarray) -> dict[str, float]:
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "mean_l2_norm": float(np.linalg.norm(values, axis=1).mean()),
    }


def _mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(((a * b).sum(axis=1) / np.maximum(norms, 1e-12)).mean())


def positions(meta: pd.DataFrame) -> dict[str, int]:
    """Rows whose stored positions are consistent: the query token is the prompt's last, the vision token
    an image token before it (the engine finds both from the ids; this reads back what it stored)."""
    return {
        "query_token_last": int((meta.query_token_pos == meta.seq_len - 1).sum()),
        "vision_token_before_query": int(
            ((meta.vision_token_pos >= 0) & (meta.vision_token_pos < meta.query_token_pos)).sum()
        ),
        "with_image_tokens": int((meta.n_image_tokens > 0).sum()),
    }


def summarize(embeddings: Embeddings) -> dict:
    meta = embeddings.meta
    vision_only = embeddings.get("vision_only")
    layers = {}
    for layer in embeddings.layers:
        vt, qt = embeddings.get("vision_token", layer), embeddings.get("query_token", layer)
        layers[str(layer)] = {
            "vision_token": _stats(vt),
            "query_token": _stats(qt),
            "cosine_vt_qt": _mean_cosine(vt, qt),
        }
    return {
        "n_samples": len(meta),
        "n_errors": len(embeddings.errors),
        "positions": positions(meta),
        "vision_only": {**_stats(vision_only), "dim": int(vision_only.shape[1])},
        "layers": layers,
        "answer": {
            "mean_chars": float(meta.answer.str.len().mean()),
            "mean_tokens": float(meta.n_generated_tokens.mean()),
        },
    }


def write_summary(embeddings: Embeddings, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, summarize(embeddings))
    return out
