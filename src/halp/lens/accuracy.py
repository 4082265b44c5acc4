"""Do the lenses read what is in the image? Scored against the demo world's ground truth (which shape,
colour and mechanism every image token's 28-pixel cell holds, `data/demo/cells.csv`), per lens and layer.

Of the tokens whose cell holds a shape: the share whose top-1 / top-5 words name its colour, its kind,
either, or any colour or shape word at all (the lens sees that something is there); of background
tokens: the share whose top-1 / top-5 words name no colour and no shape at all. Each with a 95% interval
from resampling images, each shape share also within each planted mechanism, and each against chance:
words drawn by the bank's own word frequencies, and a reading that always names the commonest colour
(kind) of the shapes.
"""

from __future__ import annotations

import re

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
        found[f"shape_any_top{k}"] = float(1 - (1 - p_shape_word) ** k)
        found[f"background_top{k}"] = float((1 - p_shape_word) ** k)
    # A reading that always says the commonest colour (kind) of the shapes: what naming it right is worth
    for name in ("colour", "kind"):
        found[f"shape_{name}_top1_constant"] = float(shapes[name].value_counts(normalize=True).max())
    return found


def lens_accuracy(
    readings: LensReadings,
    found: dict[str, np.ndarray],
    truth: pd.DataFrame,
    frequencies: dict[str, float],
    bootstrap: int = 200,
    seed: int = 0,
) -> dict:
    """{"chance": {...}, "tokens": counts, LENS: {layer: {metric: [share, low, high]}}} for the three
    lenses, from their top-5 words (`top_words`) and each token's truth (`token_truth`); metrics as in the
    module's docstring, `shape_*_in_<mechanism>` within each mechanism."""
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
        "chance": chance(truth, frequencies),
        "tokens": {"shape": int(is_shape.sum()), "background": int(is_background.sum())}
        | {m: int((truth.mechanism == m).sum()) for m in mechanisms},
    }
    for lens, words in found.items():
        result[lens] = {}
        for j, layer in enumerate(readings.layer_names):
            metrics = {}
            for k in TOP:
                top = words[:, j, :k]
                hits = {
                    "colour": (top == colour[:, None]).any(axis=1),
                    "kind": (top == kind[:, None]).any(axis=1),
                }
                hits["either"] = hits["colour"] | hits["kind"]
                hits["any"] = np.isin(top, list(SHAPE_WORDS)).any(axis=1)  # some colour or shape at all
                for name, hit in hits.items():
                    metrics[f"shape_{name}_top{k}"] = _share(hit[is_shape], image[is_shape], resamples)
                    for m in mechanisms:
                        inside = is_shape & (truth.mechanism == m).to_numpy()
                        metrics[f"shape_{name}_top{k}_in_{m}"] = _share(hit[inside], image[inside], resamples)
                no_shape_word = ~hits["any"]
                metrics[f"background_top{k}"] = _share(
                    no_shape_word[is_background], image[is_background], resamples
                )
            result[lens][layer] = metrics
    return result


ASKED = (  # the demo's questions about a shape that is there: (pattern, whether it names the colour)
    (re.compile(r"^Is there an? (?P<colour>\w+) (?P<kind>\w+) in the image\?$"), True),
    (re.compile(r"^What color is the (?P<kind>\w+)\?$"), False),
)


def asked_shapes(questions: pd.DataFrame) -> pd.DataFrame:
    """question_id, image_name, colour, kind of each demo question about a shape in the image: existence
    questions answered yes, and colour questions (their answer is the colour)."""
    rows = []
    for q in questions.itertuples():
        for pattern, names_colour in ASKED:
            if (m := pattern.match(q.question)) and (not names_colour or q.gt_answer == "yes"):
                colour = m["colour"] if names_colour else q.gt_answer
                rows.append(
                    {
                        "question_id": q.question_id,
                        "image_name": q.image_name,
                        "colour": colour,
                        "kind": m["kind"],
                    }
                )
    return pd.DataFrame(rows, columns=["question_id", "image_name", "colour", "kind"])


def model_misses(
    readings: LensReadings,
    found: dict[str, np.ndarray],
    cells: pd.DataFrame,
    truth: pd.DataFrame,
    questions: pd.DataFrame,
    hallucinated: pd.Series,
) -> dict:
    """For the questions about a shape in the image, per lens, layer and the shape's mechanism: of the
    answers the model got wrong, and of those it got right, the share where the lens's top-5 words at the
    shape's token name its colour (wrong but named: the information was there and went unused).
    {lens: {layer: {mechanism: {"wrong": [share, n], "right": [share, n]}}}}"""
    first_token = dict(
        zip(
            readings.meta.image_id,
            np.concatenate([[0], np.cumsum(readings.meta.n_image_tokens)[:-1]]),
            strict=True,
        )
    )
    grid_w = dict(zip(readings.meta.image_id, readings.meta.grid_w, strict=True))
    asked = asked_shapes(questions)
    asked = asked[asked.image_name.isin(first_token) & asked.question_id.isin(hallucinated.index)]
    placed = cells.merge(asked, on=["image_name", "colour", "kind"])
    placed["token"] = [
        first_token[i] + r * grid_w[i] + c
        for i, r, c in zip(placed.image_name, placed.row, placed.col, strict=True)
    ]
    placed = placed[
        truth.mechanism.to_numpy()[placed.token] == placed.mechanism.to_numpy()
    ]  # the grid is the cells'
    wrong = hallucinated.loc[placed.question_id].to_numpy().astype(bool)
    result: dict = {}
    for lens, words in found.items():
        result[lens] = {}
        for j, layer in enumerate(readings.layer_names):
            named = (words[placed.token.to_numpy(), j, :] == placed.colour.to_numpy()[:, None]).any(axis=1)
            result[lens][layer] = {
                m: {
                    side: [float(named[inside].mean()) if inside.any() else None, int(inside.sum())]
                    for side, inside in (("wrong", rows & wrong), ("right", rows & ~wrong))
                }
                for m in sorted(set(placed.mechanism))
                if (rows := (placed.mechanism == m).to_numpy()).any()
            }
    return result
