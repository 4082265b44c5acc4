"""What the lenses found, for people: per-layer metrics (`dvc metrics show`) and a page per model with
the first images and, per image token, the word each lens reads there."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd

from halp.data.images import load_image
from halp.lens.accuracy import lens_accuracy, model_misses, top_words
from halp.lens.lenses import METHODS
from halp.lens.words import Words
from halp.store.reader import Bank, LensReadings


def token_strings(readings: LensReadings, words: Words) -> dict[str, np.ndarray]:
    """The top-1 word of each lens, [all tokens, 1 + L] per method, in `meta` order."""
    return {m: found[..., 0] for m, found in top_words(readings, words, 1).items()}


def lens_metrics(
    readings: LensReadings,
    bank: Bank,
    words: Words,
    cells: pd.DataFrame | None,
    answers: tuple[pd.DataFrame, pd.Series] | None = None,
) -> dict:
    """Per visual layer: each lens's mean top-1 score (cosine; the logit lens's probability), how often two
    lenses' top-1 words agree, and which bank layer supplies LatentLens' top-1 neighbour how often; with
    ground truth (`cells`), whether the words name what each token's cell holds (`accuracy`), and with the
    model's answers (questions, hallucinated by question id) whether they do where it answered wrong."""
    scores = {m: np.concatenate(readings.per_image(f"{m}_scores"))[..., 0] for m in METHODS}
    source = np.concatenate(readings.per_image("latent_layers"))[..., 0]  # [T, 1 + L]
    top1 = token_strings(readings, words)
    layers = {}
    for j, name in enumerate(readings.layer_names):
        layers[name] = {
            "top1_latent_cosine": float(scores["latent"][:, j].mean()),
            "top1_embedding_cosine": float(scores["embedding"][:, j].mean()),
            "top1_logit_probability": float(scores["logit"][:, j].mean()),
            "agree_latent_embedding": float((top1["latent"][:, j] == top1["embedding"][:, j]).mean()),
            "agree_latent_logit": float((top1["latent"][:, j] == top1["logit"][:, j]).mean()),
            "agree_embedding_logit": float((top1["embedding"][:, j] == top1["logit"][:, j]).mean()),
            "top1_from_bank_layer": {
                str(b): float((source[:, j] == i).mean()) for i, b in enumerate(bank.layers)
            },
        }
    metrics = {
        "model": readings.attrs["model_name"],
        "n_images": len(readings.meta),
        "n_image_tokens": int(readings.meta.n_image_tokens.sum()),
        "bank_layers": bank.layers,
        "layers": layers,
    }
    if cells is not None and (accuracy := lens_accuracy(readings, words, cells))["tokens"]["shape"]:
        metrics["accuracy"] = accuracy  # none where the model's token grid is not the demo's cell grid
        if answers is not None:
            metrics["model_misses"] = model_misses(readings, words, cells, *answers)
    return metrics


def _image_tag(path: str) -> str:
    buffer = io.BytesIO()
    image = load_image(path)
    image.save(buffer, format="PNG")
    width = 224 if image.width >= image.height else round(224 * image.width / image.height)
    data = base64.b64encode(buffer.getvalue()).decode()
    return f'<img src="data:image/png;base64,{data}" width="{width}" style="image-rendering:pixelated">'


def lens_page(readings: LensReadings, words: Words, image_paths: dict[str, str], n_images: int) -> str:
    """HTML: for each of the first images, the image and, per layer, its tokens laid out as the model's
    token grid (where the processor gives one), each cell LatentLens' top word, the others on hover."""
    words = token_strings(readings, words)
    offsets = np.concatenate([[0], np.cumsum(readings.meta.n_image_tokens)])
    sections = []
    for i, row in readings.meta.head(n_images).iterrows():
        tokens = range(offsets[i], offsets[i + 1])
        width = row.grid_w if row.grid_t * row.grid_h * row.grid_w == len(tokens) else min(len(tokens), 16)
        tables = []
        for j, layer in enumerate(readings.layer_names):
            cells = [
                f'<td title="{html.escape(" | ".join(f"{m}: {words[m][t, j]!s}" for m in words))}">'
                f"{html.escape(str(words['latent'][t, j]).strip())}</td>"
                for t in tokens
            ]
            rows = "".join(f"<tr>{''.join(cells[k : k + width])}</tr>" for k in range(0, len(cells), width))
            title = "the LM's input" if layer == "input" else f"block {layer}"
            tables.append(f"<div class=layer><b>{title}</b><table>{rows}</table></div>")
        sections.append(
            f"<section><h2>{html.escape(row.image_id)}</h2>{_image_tag(image_paths[row.image_id])}"
            f"<div class=layers>{''.join(tables)}</div></section>"
        )
    style = (
        "body{font-family:sans-serif;margin:1em}section{margin-bottom:2em}.layers{display:flex;flex-wrap:wrap;"
        "gap:1em}table{border-collapse:collapse}td{border:1px solid #ccc;padding:2px 4px;font-size:12px;"
        "min-width:3em;text-align:center}"
    )
    model = html.escape(readings.attrs["model_name"])
    intro = (
        f"<h1>{model}: what each image token means, layer by layer</h1><p>Each cell is one image token, laid "
        "out as the model's token grid; it shows LatentLens' nearest word (the contextual bank, all bank "
        "layers); hover for EmbeddingLens and LogitLens.</p>"
    )
    head = f"<!doctype html><meta charset=utf-8><title>{model} lens</title><style>{style}</style>"
    return head + intro + "".join(sections)


def write_lens_outputs(
    readings: LensReadings,
    bank: Bank,
    words: Words,
    cells: pd.DataFrame | None,
    answers: tuple[pd.DataFrame, pd.Series] | None,
    image_paths: dict[str, str],
    metrics_dir: Path,
    view_dir: Path,
    n_images: int,
) -> None:
    name = readings.attrs["model_name"]
    metrics_dir.mkdir(parents=True, exist_ok=True)
    view_dir.mkdir(parents=True, exist_ok=True)
    metrics = lens_metrics(readings, bank, words, cells, answers)
    (metrics_dir / f"{name}.json").write_text(json.dumps(metrics, indent=1) + "\n")
    (view_dir / f"{name}.html").write_text(lens_page(readings, words, image_paths, n_images))
