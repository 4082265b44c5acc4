"""Do the lenses read what is in the image? Scored against the demo world's ground truth (which shape,
colour and mechanism every image token's 28-pixel cell holds, `data/demo/cells.csv`), per lens and layer.

Of the tokens whose cell holds a shape: the share whose top-1 / top-5 words name its colour, its kind, or
either; of background tokens: the share whose top-1 / top-5 words name no colour and no shape at all.
Each with a 95% interval from resampling images, each shape share also within each planted mechanism,
and each against chance: words drawn by the bank's own word frequencies.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from halp.data.demo import COLOURS, SHAPES
from halp.lens.words import Words
from halp.store.reader import LensReadings

SHAPE_WORDS = frozenset(COLOURS) | frozenset(SHAPES)
TOP = (1, 5)


def token_truth(readings: LensReadings, cells: pd.DataFrame) -> pd.DataFrame:
    """Per image token in `meta` order: its image's position in meta, and its cell's colour, kind and
    mechanism (token t of a grid w wide is cell (t // w, t % w)). Only an image whose token grid is its
    grid of cells (one frame, one token per cell) has truth; the others' tokens get mechanism None."""
    shape = cells.groupby("image_name")[["row", "col"]].max() + 1
    by_image = {name: table for name, table in cells.groupby("image_name")}
    parts = []
    for i, image in enumerate(readings.meta.itertuples()):
        unknown = pd.DataFrame(
            {"colour": "", "kind": "", "mechanism": None}, index=range(image.n_image_tokens)
        )
        known = image.image_id in by_image and image.grid_t == 1
        if known and tuple(shape.loc[image.image_id]) == (image.grid_h, image.grid_w):
            table = by_image[image.image_id].sort_values(["row", "col"])
            part = table[["colour", "kind", "mechanism"]].reset_index(drop=True)
        else:
            part = unknown
        parts.append(part.assign(image=i))
    return pd.concat(parts, ignore_index=True)


def top_words(readings: LensReadings, words: Words, k: int) -> dict[str, np.ndarray]:
    """Each lens's k best words, [all tokens, 1 + L, k] per lens, in `meta` order."""
    stacked = {
        name: np.concatenate(readings.per_image(name))[..., :k]
        for name in ("latent_rows", "embedding_ids", "logit_ids")
    }
    return {
        "latent": words.of_rows(stacked["latent_rows"]),
        "embedding": words.of_ids(stacked["embedding_ids"]),
        "logit": words.of_ids(stacked["logit_ids"]),
    }


def _share(hit: np.ndarray, image: np.ndarray, resamples: np.ndarray) -> list[float]:
    """[share, 95% low, 95% high]: the share of hits, its interval from resampled images."""
    if not len(hit):
        return [float("nan")] * 3
    n_images = resamples.shape[1]
    hits = np.bincount(image, weights=hit, minlength=n_images)
    counts = np.bincount(image, minlength=n_images)
    boot = (resamples @ hits) / np.maximum(resamples @ counts, 1)
    return [float(hit.mean()), float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))]


def chance(truth: pd.DataFrame, frequencies: dict[str, float]) -> dict[str, float]:
    """What words drawn by the bank's word frequencies would score, top-1 and top-5 (5 independent draws)."""
    shapes = truth[truth.mechanism.notna() & (truth.mechanism != "background")]
    p_colour = shapes.colour.map(lambda c: frequencies.get(c, 0.0)).to_numpy()
    p_kind = shapes.kind.map(lambda c: frequencies.get(c, 0.0)).to_numpy()
    p_shape_word = sum(frequencies.get(w, 0.0) for w in SHAPE_WORDS)
    found = {}
    for k in TOP:
        for name, p in (("colour", p_colour), ("kind", p_kind), ("either", p_colour + p_kind)):
            found[f"shape_{name}_top{k}"] = float(np.mean(1 - (1 - p) ** k)) if len(p) else float("nan")
        found[f"background_top{k}"] = float((1 - p_shape_word) ** k)
    return found


def lens_accuracy(
    readings: LensReadings, words: Words, cells: pd.DataFrame, bootstrap: int = 200, seed: int = 0
) -> dict:
    """{"chance": {...}, "tokens": counts, LENS: {layer: {metric: [share, low, high]}}} for the three
    lenses; metrics as in the module's docstring, `shape_*_in_<mechanism>` within each mechanism."""
    truth = token_truth(readings, cells)
    image = truth.image.to_numpy()
    rng = np.random.default_rng(seed)
    n_images = len(readings.meta)
    resamples = np.stack(
        [np.bincount(rng.integers(0, n_images, n_images), minlength=n_images) for _ in range(bootstrap)]
    )
    is_shape = (truth.mechanism.notna() & (truth.mechanism != "background")).to_numpy()
    is_background = (truth.mechanism == "background").to_numpy()
    mechanisms = sorted(set(truth.mechanism[is_shape]))
    colour, kind = truth.colour.to_numpy(), truth.kind.to_numpy()
    result: dict = {
        "chance": chance(truth, words.frequencies()),
        "tokens": {"shape": int(is_shape.sum()), "background": int(is_background.sum())}
        | {m: int((truth.mechanism == m).sum()) for m in mechanisms},
    }
    for lens, found in top_words(readings, words, max(TOP)).items():
        result[lens] = {}
        for j, layer in enumerate(readings.layer_names):
            metrics = {}
            for k in TOP:
                top = found[:, j, :k]
                hits = {
                    "colour": (top == colour[:, None]).any(axis=1),
                    "kind": (top == kind[:, None]).any(axis=1),
                }
                hits["either"] = hits["colour"] | hits["kind"]
                for name, hit in hits.items():
                    metrics[f"shape_{name}_top{k}"] = _share(hit[is_shape], image[is_shape], resamples)
                    for m in mechanisms:
                        inside = is_shape & (truth.mechanism == m).to_numpy()
                        metrics[f"shape_{name}_top{k}_in_{m}"] = _share(hit[inside], image[inside], resamples)
                no_shape_word = ~np.isin(top, list(SHAPE_WORDS)).any(axis=1)
                metrics[f"background_top{k}"] = _share(
                    no_shape_word[is_background], image[is_background], resamples
                )
            result[lens][layer] = metrics
    return result
