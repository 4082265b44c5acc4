"""What the lenses found, for people: per-layer metrics (`dvc metrics show`) and a page per model with
the first images and, per image token, the word each lens reads there."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from halp.data.images import load_image
from halp.jsonfile import write_json
from halp.lens.accuracy import SHAPE_WORDS, lens_accuracy, model_misses, token_truth, top_words
from halp.lens.lenses import METHODS
from halp.lens.words import Words
from halp.store.reader import Bank, LensReadings


def lens_metrics(
    readings: LensReadings,
    bank: Bank,
    words: Words,
    found: dict[str, np.ndarray],
    ground_truth: tuple[pd.DataFrame, pd.DataFrame] | None,
    answers: tuple[pd.DataFrame, pd.Series] | None = None,
    judged: Callable[[dict[str, np.ndarray]], dict] | None = None,
) -> dict:
    """Per visual layer: each lens's mean top-1 score (cosine; the logit lens's probability), how often two
    lenses' top-1 words agree, and which bank layer supplies LatentLens' top-1 neighbour how often; with
    ground truth (the cells, and each token's truth from them), whether the words name what each token's
    cell holds (`accuracy`), and with the model's answers (questions, hallucinated by question id) whether
    they do where it answered wrong; with `judged`, an LLM judge's verdicts (`halp.lens.judge`). `found`
    is each lens's top-5 words (`top_words`)."""
    scores = {m: np.concatenate(readings.per_image(f"{m}_scores"))[..., 0] for m in METHODS}
    source = np.concatenate(readings.per_image("latent_layers"))[..., 0]  # [T, 1 + L]
    top1 = {m: found[m][..., 0] for m in METHODS}
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
    if ground_truth is not None:
        cells, truth = ground_truth
        accuracy = lens_accuracy(readings, found, truth, words.frequencies())
        if accuracy["tokens"]["shape"]:  # none where the model's token grid is not the demo's cell grid
            metrics["accuracy"] = accuracy
            if answers is not None:
                metrics["model_misses"] = model_misses(readings, found, cells, truth, *answers)
    if judged is not None:
        metrics["judge"] = judged(found)
    return metrics


def _image_data(path: str) -> tuple[str, int, int]:
    buffer = io.BytesIO()
    image = load_image(path)
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode(), image.width, image.height


def _mark(word: str, truth: pd.Series) -> str:
    """right / wrong where the cell's content is known: a shape cell is read right when the word names its
    colour or kind, a background cell when the word names no colour or shape."""
    if truth.mechanism is None or pd.isna(truth.mechanism):
        return ""
    if truth.mechanism == "background":
        return "wrong" if word in SHAPE_WORDS else "right"
    return "right" if word in (truth.colour, truth.kind) else "wrong"


SCALE = 4  # the demo's 84-pixel images are drawn 4x, pixelated, so a cell's word fits on it


def lens_page(
    readings: LensReadings,
    found: dict[str, np.ndarray],
    image_paths: dict[str, str],
    n_images: int,
    truth: pd.DataFrame | None = None,
) -> str:
    """HTML: each of the first images with its token grid drawn over it, each cell the top-1 word of the
    chosen lens at the chosen layer (selectors at the top), marked right or wrong where the ground truth
    (`token_truth`) knows what the cell holds; every lens's top 5 words (`found`) on hover."""
    offsets = np.concatenate([[0], np.cumsum(readings.meta.n_image_tokens)])
    sections = []
    for i, row in readings.meta.head(n_images).iterrows():
        tokens = range(offsets[i], offsets[i + 1])
        on_grid = row.grid_t == 1 and row.grid_h * row.grid_w == len(tokens)
        columns, rows = (row.grid_w, row.grid_h) if on_grid else (min(len(tokens), 16), -(-len(tokens) // 16))
        data, width, height = _image_data(image_paths[row.image_id])
        overlays = []
        for j, layer in enumerate(readings.layer_names):
            for lens in METHODS:
                cells_html = []
                for t in tokens:
                    word = str(found[lens][t, j, 0])
                    mark = _mark(word, truth.iloc[t]) if truth is not None else ""
                    hover = " | ".join(f"{m}: {', '.join(map(str, found[m][t, j]))}" for m in METHODS)
                    cells_html.append(
                        f'<div class="cell {mark}" title="{html.escape(hover)}">{html.escape(word)}</div>'
                    )
                overlays.append(
                    f'<div class="grid" data-layer="{layer}" data-lens="{lens}" '
                    f'style="grid-template-columns:repeat({columns},1fr);grid-template-rows:repeat({rows},1fr)">'
                    f"{''.join(cells_html)}</div>"
                )
        picture = (
            f'<div class="picture" style="width:{width * SCALE}px;height:{height * SCALE}px;'
            f'background-image:url(data:image/png;base64,{data})">{"".join(overlays)}</div>'
        )
        sections.append(
            f"<section><h2>{html.escape(row.image_id)}: {html.escape(row.question)}</h2>{picture}</section>"
        )
    options = "".join(
        f'<option value="{layer}">{LM_INPUT if layer == "input" else f"block {layer}"}</option>'
        for layer in readings.layer_names
    )
    lenses = "".join(f'<option value="{m}">{LENS_NAMES[m]}</option>' for m in METHODS)
    style = (
        "body{font-family:sans-serif;margin:1em}section{margin-bottom:1.5em}h2{font-size:14px}"
        ".picture{position:relative;background-size:100% 100%;image-rendering:pixelated}"
        ".grid{position:absolute;inset:0;display:none}.grid.shown{display:grid}"
        ".cell{display:flex;align-items:center;justify-content:center;font-size:13px;color:#000;"
        "text-shadow:0 0 3px #fff,0 0 3px #fff;border:1px dashed rgba(0,0,0,.25)}"
        ".cell.right{border:3px solid #1a9641}.cell.wrong{border:3px solid #d7191c}"
        ".legend span{padding:0 .5em;margin-right:1em}"
    )
    script = (
        "function show(){const l=document.getElementById('layer').value,"
        "m=document.getElementById('lens').value;"
        "document.querySelectorAll('.grid').forEach(g=>g.classList.toggle('shown',"
        "g.dataset.layer===l&&g.dataset.lens===m));}"
        "const asked=new URLSearchParams(location.hash.slice(1));"  # e.g. NAME.html#layer=3&lens=logit
        "document.querySelectorAll('select').forEach(s=>{if(asked.has(s.id))s.value=asked.get(s.id);"
        "s.onchange=show;});show();"
    )
    model = html.escape(readings.attrs["model_name"])
    legend = (
        '<p class="legend"><span style="border:3px solid #1a9641">names what the cell holds</span>'
        '<span style="border:3px solid #d7191c">does not</span> (a shape cell: its colour or kind; '
        "background: no colour or shape word). Hover a cell for every lens's top 5.</p>"
        if truth is not None
        else "<p>Hover a cell for every lens's top 5.</p>"
    )
    intro = (
        f"<h1>{model}: what each image token means, layer by layer</h1><p>Each image is drawn with the "
        "model's token grid over it; each cell shows the chosen lens's nearest word (as a whole word) for "
        f"that token at the chosen layer.</p><p>Layer <select id=layer>{options}</select> lens "
        f"<select id=lens>{lenses}</select></p>{legend}"
    )
    head = f"<!doctype html><meta charset=utf-8><title>{model} lens</title><style>{style}</style>"
    return head + intro + "".join(sections) + f"<script>{script}</script>"


LM_INPUT = "the LM's input"
LENS_NAMES = {"latent": "LatentLens (contextual bank)", "embedding": "EmbeddingLens", "logit": "LogitLens"}


def write_lens_outputs(
    readings: LensReadings,
    bank: Bank,
    words: Words,
    cells: pd.DataFrame | None,
    answers: tuple[pd.DataFrame, pd.Series] | None,
    judged: Callable[[dict[str, np.ndarray]], dict] | None,
    image_paths: dict[str, str],
    metrics_dir: Path,
    view_dir: Path,
    n_images: int,
) -> None:
    name = readings.attrs["model_name"]
    metrics_dir.mkdir(parents=True, exist_ok=True)
    view_dir.mkdir(parents=True, exist_ok=True)
    found = top_words(readings, words, 5)  # every token's words, mapped once for all that follows
    ground_truth = None if cells is None else (cells, token_truth(readings, cells))
    metrics = lens_metrics(readings, bank, words, found, ground_truth, answers, judged)
    write_json(metrics_dir / f"{name}.json", metrics, indent=1)
    truth = None if ground_truth is None else ground_truth[1]
    (view_dir / f"{name}.html").write_text(lens_page(readings, found, image_paths, n_images, truth))
