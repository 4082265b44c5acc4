"""The generated demo world: coloured shapes at known positions, with questions whose answers are known.

The evaluation set is written in the real HALP CSV schema so every later stage runs on it exactly as on
the real data; the demo VLM (`halp.organism`) trains on scenes of the same world drawn from another
seed. Three mechanisms that make a model hallucinate are planted, each graded so that within one some
answers are right and some wrong:
- `small`: a shape's radius drawn from a continuous range down to a few pixels (a vision failure);
- `faint`: a shape's colour blended into the background, contrast drawn from a continuous range;
- `rare_combination`: colour-shape pairs (`RARE`) that training scenes almost never hold (a language
  side failure: the words are known, the pair is not).
Everything is drawn from one seeded RNG, so the same seed gives byte-identical files.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from PIL import Image, ImageDraw

from halp.data.schema import COLUMNS

log = logging.getLogger(__name__)

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (140, 60, 170),
    "orange": (240, 140, 30),
}
SHAPES = ("circle", "square", "triangle")
BACKGROUND = (245, 245, 240)
# Cells of 28 pixels, the area one merged Qwen2-VL image token covers, one shape per cell at most:
# a small VLM learns to see a shape that sits in one token far sooner than one cut across four.
CELL = 28
CANVAS_SIZES = ((84, 84), (112, 84), (84, 112))  # (width, height): 3x3, 4x3 and 3x4 cells
NORMAL_RADIUS = (9, 11)
RARE = frozenset({("purple", "triangle"), ("orange", "square")})
MECHANISMS_CSV = "mechanisms.csv"  # question_id -> the planted mechanism behind it, next to the questions
CELLS_CSV = "cells.csv"  # image_name, row, col -> what that cell (one merged image token) holds


@dataclass(frozen=True)
class World:
    """How scenes are drawn. Evaluation and training differ only in how often the rare pairs appear."""

    small_rate: float = 0.2  # share of shapes drawn small: radius uniform in [SMALLEST, normal radius]
    faint_rate: float = 0.2  # share drawn faint: contrast uniform in [FAINTEST, 1]
    rare_keep: float = 1.0  # a rare colour-shape pair, once drawn, is kept with this probability
    rare_boost: float = 0.0  # share of scenes that hold one rare pair for sure (the others draw uniformly)
    shapes: tuple[int, int] = (2, 4)  # fewest and most shapes in a scene


SMALLEST, FAINTEST = 2, 0.05
# Evaluation plants more than training shows: 30% small and 30% faint shapes, and half the scenes hold a
# rare pair, so that the planted failures, not the model's general mistakes, make most hallucinations.
EVALUATION = World(small_rate=0.3, faint_rate=0.3, rare_boost=0.5)
TRAINING = World(rare_keep=0.04, shapes=(1, 4))  # one-shape scenes teach colour without binding


@dataclass(frozen=True)
class Shape:
    colour: str
    kind: str
    cx: int
    cy: int
    radius: int
    contrast: float = 1.0
    mechanism: str = "clean"  # "small", "faint" or "clean" (drawn as it normally is)

    @property
    def name(self) -> str:
        return f"{self.colour} {self.kind}"

    @property
    def fill(self) -> tuple[int, ...]:
        return tuple(
            round(b + self.contrast * (c - b)) for c, b in zip(COLOURS[self.colour], BACKGROUND, strict=True)
        )


def draw(size: tuple[int, int], shapes: list[Shape]) -> Image.Image:
    image = Image.new("RGB", size, BACKGROUND)
    pen = ImageDraw.Draw(image)
    for s in shapes:
        box = (s.cx - s.radius, s.cy - s.radius, s.cx + s.radius, s.cy + s.radius)
        if s.kind == "circle":
            pen.ellipse(box, fill=s.fill)
        elif s.kind == "square":
            pen.rectangle(box, fill=s.fill)
        else:
            pen.polygon([(s.cx, s.cy - s.radius), (box[0], box[3]), (box[2], box[3])], fill=s.fill)
    return image


def _pairs(rng: random.Random, n: int, world: World) -> list[tuple[str, str]]:
    """n distinct colour-shape pairs in random order; a rare pair survives a draw with probability
    world.rare_keep, and a share world.rare_boost of scenes holds one rare pair for sure."""
    kinds = [(colour, kind) for colour in COLOURS for kind in SHAPES]
    boosted = [rng.choice(sorted(RARE))] if rng.random() < world.rare_boost else []
    while True:
        pairs = boosted + rng.sample([k for k in kinds if k not in boosted], n - len(boosted))
        if all(p in boosted or p not in RARE or rng.random() < world.rare_keep for p in pairs):
            return rng.sample(pairs, n)


def scene(rng: random.Random, size: tuple[int, int], world: World = EVALUATION) -> list[Shape]:
    width, height = size
    cells = [(c, r) for c in range(width // CELL) for r in range(height // CELL)]
    n = rng.randint(*world.shapes)
    shapes = []
    for (col, row), (colour, kind) in zip(rng.sample(cells, n), _pairs(rng, n, world), strict=True):
        cx = col * CELL + CELL // 2 + rng.randint(-2, 2)
        cy = row * CELL + CELL // 2 + rng.randint(-2, 2)
        normal = rng.randint(*NORMAL_RADIUS)
        draw_kind = rng.random()
        if draw_kind < world.small_rate:
            shapes.append(Shape(colour, kind, cx, cy, rng.randint(SMALLEST, normal), 1.0, "small"))
        elif draw_kind < world.small_rate + world.faint_rate:
            contrast = round(rng.uniform(FAINTEST, 1.0), 3)
            shapes.append(Shape(colour, kind, cx, cy, normal, contrast, "faint"))
        else:
            shapes.append(Shape(colour, kind, cx, cy, normal))
    return shapes


def _describe(shapes: list[Shape], size: tuple[int, int]) -> str:
    width, height = size

    def where(s: Shape) -> str:
        vertical = "top" if s.cy < height / 2 else "bottom"
        horizontal = "left" if s.cx < width / 3 else "right" if s.cx > 2 * width / 3 else "centre"
        return f"{vertical} {horizontal}"

    return "; ".join(f"{_article(s.colour)} {s.name} at the {where(s)}" for s in shapes)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _absent(rng: random.Random, shapes: list[Shape]) -> tuple[str, str]:
    present = {(s.colour, s.kind) for s in shapes}
    return rng.choice([(c, k) for c in COLOURS for k in SHAPES if (c, k) not in present])


def _mechanism(shapes: list[Shape], asked: tuple[str, str] | None = None) -> str:
    """The planted mechanism behind a question: a small or faint shape it is about first, then a rare
    pair it names (present or not), else "clean"."""
    for s in shapes:
        if s.mechanism != "clean":
            return s.mechanism
    pairs = {(s.colour, s.kind) for s in shapes} | ({asked} if asked else set())
    return "rare_combination" if pairs & RARE else "clean"


@dataclass(frozen=True)
class Question:
    category: str
    question: str
    gt_answer: str
    is_relational: bool
    dataset: str
    mechanism: str


def questions(rng: random.Random, shapes: list[Shape]) -> list[Question]:
    """Several questions of the three kinds for one scene, each with its known answer. Relations ("Is the X
    left of the Y?") are left out: a model of the demo's size does not learn them within the training
    budget (at chance in every variant we trained), so their errors are noise no representation predicts."""
    rows = []
    target = rng.choice(shapes)
    text = f"Is there {_article(target.colour)} {target.name} in the image?"
    rows.append(Question("existence", text, "yes", False, "demo_shapes", _mechanism([target])))
    colour, kind = _absent(rng, shapes)
    text = f"Is there {_article(colour)} {colour} {kind} in the image?"
    rows.append(Question("existence", text, "no", False, "demo_shapes", _mechanism([], (colour, kind))))

    by_kind = {s.kind: [t for t in shapes if t.kind == s.kind] for s in shapes}
    unique = [s for s in shapes if len(by_kind[s.kind]) == 1]
    if unique:
        s = rng.choice(unique)
        text = f"What color is the {s.kind}?"
        rows.append(Question("attribute", text, s.colour, False, "demo_shapes", _mechanism([s])))

    colour, kind = _absent(rng, shapes)
    anchor = rng.choice(shapes)
    text = f"Why is the {colour} {kind} touching the {anchor.name}?"
    truth = f"No; there is no {colour} {kind} in the image"
    mechanism = _mechanism([anchor], (colour, kind))
    rows.append(Question("false_premise", text, truth, True, "demo_haloquest", mechanism))
    return rows


def cell_contents(image_name: str, size: tuple[int, int], shapes: list[Shape]) -> list[dict]:
    """What every 28-pixel cell of one image holds (the ground truth of a merged image token there): its
    shape's colour, kind and mechanism (small, faint, rare_combination or clean), or background."""
    by_cell = {(s.cy // CELL, s.cx // CELL): s for s in shapes}
    width, height = size
    cells = []
    for row in range(height // CELL):
        for col in range(width // CELL):
            s = by_cell.get((row, col))
            held = {"colour": "", "kind": "", "mechanism": "background"}
            if s is not None:
                rare = (s.colour, s.kind) in RARE and s.mechanism == "clean"
                held = {
                    "colour": s.colour,
                    "kind": s.kind,
                    "mechanism": "rare_combination" if rare else s.mechanism,
                }
            cells.append({"image_name": image_name, "row": row, "col": col} | held)
    return cells


def generate_demo(out_dir: Path, n_images: int, seed: int) -> Path:
    """Write images/, questions.csv, mechanisms.csv and cells.csv (every image token's ground truth) under
    out_dir; returns the questions' path."""
    rng = random.Random(seed)
    images_dir = out_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    records, cells = [], []
    for i in range(n_images):
        size = CANVAS_SIZES[rng.randrange(len(CANVAS_SIZES))]
        shapes = scene(rng, size)
        image_name = f"demo_{i:05d}.png"
        draw(size, shapes).save(images_dir / image_name, format="PNG")
        cells += cell_contents(image_name, size, shapes)
        description = _describe(shapes, size)
        for q in questions(rng, shapes):
            records.append(dict(image_name=image_name, description=description, has_image=True, **vars(q)))
    table = pd.DataFrame(records)
    table.insert(0, "question_id", [f"question_comb_{n}" for n in range(len(table))])
    csv_path = out_dir / "questions.csv"
    table[list(COLUMNS)].to_csv(csv_path, index=False, lineterminator="\n")
    table[["question_id", "mechanism"]].to_csv(out_dir / MECHANISMS_CSV, index=False, lineterminator="\n")
    pd.DataFrame(cells).to_csv(out_dir / CELLS_CSV, index=False, lineterminator="\n")
    log.info("demo dataset: %d images, %d questions -> %s", n_images, len(table), csv_path)
    return csv_path
