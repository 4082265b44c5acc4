"""Export to the seeds' per-question layout, for analysis scripts written against the old files."""

from __future__ import annotations

from pathlib import Path

import h5py

from halp.store.reader import Embeddings


def export_per_question(embeddings: Embeddings, out: Path) -> Path:
    """question_comb_N/{image_id, question, ground_truth_answer, answer, vision_only_representation,
    vision_token_representation/layer_k, query_token_representation/layer_k}, one group per sample."""
    meta = embeddings.meta
    vision_only = embeddings.get("vision_only")
    per_layer = {
        (rep, layer): embeddings.get(rep, layer)
        for rep in ("vision_token", "query_token")
        for layer in embeddings.layers
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(out, "w") as f:
        for key, value in embeddings.attrs.items():
            f.attrs[key] = value
        for i, row in enumerate(meta.itertuples()):
            group = f.create_group(row.sample_id)
            group["image_id"] = row.image_id
            group["question"] = row.question
            group["ground_truth_answer"] = row.ground_truth
            group["answer"] = row.answer
            group["vision_only_representation"] = vision_only[i]
            for (rep, layer), values in per_layer.items():
                group[f"{rep}_representation/layer_{layer}"] = values[i]
    return out
