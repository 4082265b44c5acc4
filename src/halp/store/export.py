"""Export to the seeds' per-question layout, for analysis scripts written against the old files."""

from __future__ import annotations

import io
from pathlib import Path

import h5py
import numpy as np

from halp.store.parts import write_atomically, writing_output
from halp.store.reader import Embeddings

TEXTS = {
    "image_id": "image_id",
    "question": "question",
    "ground_truth_answer": "ground_truth",
    "answer": "answer",
}


def _store_text(group: h5py.Group, name: str, text: str) -> None:
    """A string as the seeds stored it; one HDF5 cannot hold as a string (a NUL, which ends HDF5 strings,
    or a lone surrogate from byte-level decoding) as its UTF-8 bytes, marked `utf8_bytes`, so nothing is
    cut or lost: `dataset[()].tobytes().decode("utf-8", "surrogatepass")` reads it."""
    encoded = text.encode("utf-8", "surrogatepass")
    if "\x00" not in text and encoded.decode("utf-8", "ignore") == text:
        group[name] = text
        return
    group[name] = np.frombuffer(encoded, dtype=np.uint8)
    group[name].attrs["utf8_bytes"] = True


def export_per_question(embeddings: Embeddings, out: Path) -> Path:
    """question_comb_N/{image_id, question, ground_truth_answer, answer, vision_only_representation,
    vision_token_representation/layer_k, query_token_representation/layer_k}, one group per sample.
    Built in memory (beside the arrays it copies), then written whole or not at all: HDF5 writing onto a
    full disk fails in its destructors, and can crash."""
    image = io.BytesIO()
    with h5py.File(image, "w") as f:
        _fill(f, embeddings)
    with writing_output(out, "no partial file is left, and the embeddings are untouched"):
        out.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(out, image.getbuffer())
    return out


def _fill(f: h5py.File, embeddings: Embeddings) -> None:
    vision_only = embeddings.get("vision_only")
    per_layer = {
        (rep, layer): embeddings.get(rep, layer)
        for rep in ("vision_token", "query_token")
        for layer in embeddings.layers
    }
    for key, value in embeddings.attrs.items():
        f.attrs[key] = value
    for i, row in enumerate(embeddings.meta.itertuples()):
        group = f.create_group(row.sample_id)
        for name, column in TEXTS.items():
            _store_text(group, name, getattr(row, column))
        group["vision_only_representation"] = vision_only[i]
        for (rep, layer), values in per_layer.items():
            group[f"{rep}_representation/layer_{layer}"] = values[i]
