"""The generated demo dataset: coloured shapes at known positions, with questions whose answers are known.

It is written in the real HALP CSV schema so every later stage runs on it exactly as on the real data.
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
CANVAS_SIZES = ((160, 120), (120, 160), (200, 140), (140, 140))  # (width, height): varied on purpose
GRID = (3, 2)  # columns x rows of cells; one shape per cell keeps shapes apart


@dataclass(frozen=True)
class Shape:
    colour: str
    kind: str
    cx: int
    cy: int
    radius: int

    @property
    def name(self) -> str:
        return f"{self.colour} {self.kind}"


def _draw(size: tuple[int, int], shapes: list[Shape]) -> Image.Image:
    image = Image.new("RGB", size, (245, 245, 240))
    pen = ImageDraw.Draw(image)
    for s in shapes:
        box = (s.cx - s.radius, s.cy - s.radius, s.cx + s.radius, s.cy + s.radius)
        fill = COLOURS[s.colour]
        if s.kind == "circle":
            pen.ellipse(box, fill=fill)
        elif s.kind == "square":
            pen.rectangle(box, fill=fill)
        else:
            pen.polygon([(s.cx, s.cy - s.radius), (box[0], box[3]), (box[2], box[3])], fill=fill)
    return image


def _scene(rng: random.Random, size: tuple[int, int]) -> list[Shape]:
    width, height = size
    cells = [(c, r) for c in range(GRID[0]) for r in range(GRID[1])]
    kinds = [(colour, kind) for colour in COLOURS for kind in SHAPES]
    n = rng.randint(2, 4)
    cell_w, cell_h = width // GRID[0], height // GRID[1]
    radius = min(cell_w, cell_h) // 3
    shapes = []
    for (col, row), (colour, kind) in zip(rng.sample(cells, n), rng.sample(kinds, n), strict=True):
        cx = col * cell_w + cell_w // 2 + rng.randint(-radius // 3, radius // 3)
        cy = row * cell_h + cell_h // 2 + rng.randint(-radius // 3, radius // 3)
        shapes.append(Shape(colour, kind, cx, cy, radius))
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


def _questions(rng: random.Random, shapes: list[Shape]) -> list[dict]:
    """Several questions of the four kinds for one scene, each with its known answer."""
    rows = []
    target = rng.choice(shapes)
    rows.append(
        (
            "existence",
            f"Is there {_article(target.colour)} {target.name} in the image?",
            "yes",
            False,
            "demo_shapes",
        )
    )
    colour, kind = _absent(rng, shapes)
    rows.append(
        (
            "existence",
            f"Is there {_article(colour)} {colour} {kind} in the image?",
            "no",
            False,
            "demo_shapes",
        )
    )

    by_kind = {s.kind: [t for t in shapes if t.kind == s.kind] for s in shapes}
    unique = [s for s in shapes if len(by_kind[s.kind]) == 1]
    if unique:
        s = rng.choice(unique)
        rows.append(("attribute", f"What color is the {s.kind}?", s.colour, False, "demo_shapes"))

    a, b = rng.sample(shapes, 2)
    if abs(a.cx - b.cx) > a.radius:
        relation, holds = "to the left of", a.cx < b.cx
    else:
        relation, holds = "above", a.cy < b.cy
    answer = "yes" if holds else "no"
    rows.append(("spatial", f"Is the {a.name} {relation} the {b.name}?", answer, True, "demo_shapes"))
    rows.append(
        (
            "spatial",
            f"Which shape is closest to the {a.name}?",
            min((t for t in shapes if t != a), key=lambda t: (t.cx - a.cx) ** 2 + (t.cy - a.cy) ** 2).name,
            True,
            "demo_shapes",
        )
    )

    colour, kind = _absent(rng, shapes)
    anchor = rng.choice(shapes)
    rows.append(
        (
            "false_premise",
            f"Why is the {colour} {kind} touching the {anchor.name}?",
            f"No; there is no {colour} {kind} in the image",
            True,
            "demo_haloquest",
        )
    )
    return [dict(category=c, question=q, gt_answer=g, is_relational=r, dataset=d) for c, q, g, r, d in rows]


def generate_demo(out_dir: Path, n_images: int, seed: int) -> Path:
    """Write images/ and questions.csv under out_dir; returns the CSV path."""
    rng = random.Random(seed)
    images_dir = out_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n_images):
        size = CANVAS_SIZES[rng.randrange(len(CANVAS_SIZES))]
        shapes = _scene(rng, size)
        image_name = f"demo_{i:05d}.png"
        _draw(size, shapes).save(images_dir / image_name, format="PNG")
        description = _describe(shapes, size)
        for q in _questions(rng, shapes):
            records.append(dict(image_name=image_name, description=description, has_image=True, **q))
    table = pd.DataFrame(records)
    table.insert(0, "question_id", [f"question_comb_{n}" for n in range(len(table))])
    csv_path = out_dir / "questions.csv"
    table[list(COLUMNS)].to_csv(csv_path, index=False, lineterminator="\n")
    log.info("demo dataset: %d images, %d questions -> %s", n_images, len(table), csv_path)
    return csv_path
