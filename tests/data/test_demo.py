from __future__ import annotations

import random
import re

import pandas as pd
from PIL import Image

from halp.data.demo import BACKGROUND, CANVAS_SIZES, CELLS_CSV, MECHANISMS_CSV, SMALLEST, generate_demo, scene
from halp.data.schema import COLUMNS


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_files(tmp_path):
    generate_demo(tmp_path / "a", n_images=6, seed=3)
    generate_demo(tmp_path / "b", n_images=6, seed=3)
    generate_demo(tmp_path / "c", n_images=6, seed=4)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    assert _files(tmp_path / "a") != _files(tmp_path / "c")


def test_halp_schema_three_kinds_several_questions_per_image(tmp_path):
    table = pd.read_csv(generate_demo(tmp_path, n_images=10, seed=0))
    assert tuple(table.columns) == COLUMNS
    assert set(table.category) == {"existence", "attribute", "false_premise"}
    assert table.question_id.str.fullmatch(r"question_comb_\d+").all()
    assert table.question_id.is_unique
    assert table.groupby("image_name").size().min() >= 3
    assert all((tmp_path / "images" / name).is_file() for name in table.image_name)
    false_premise = table[table.category == "false_premise"]
    assert false_premise.gt_answer.str.startswith("No; there is no").all()
    assert table.is_relational.any() and not table.is_relational.all()


def test_answers_agree_with_the_scene(tmp_path):
    table = pd.read_csv(generate_demo(tmp_path, n_images=10, seed=0))
    for row in table[table.category == "existence"].itertuples():
        thing = re.fullmatch(r"Is there an? (\w+ \w+) in the image\?", row.question).group(1)
        assert (thing in row.description) == (row.gt_answer == "yes"), row


def test_planted_mechanisms_are_graded_and_listed_for_every_question(tmp_path):
    table = pd.read_csv(generate_demo(tmp_path, n_images=40, seed=0))
    mechanisms = pd.read_csv(tmp_path / MECHANISMS_CSV)
    assert list(mechanisms.question_id) == list(table.question_id)
    assert set(mechanisms.mechanism) == {"clean", "small", "faint", "rare_combination"}
    rng = random.Random(0)
    shapes = [s for _ in range(300) for s in scene(rng, CANVAS_SIZES[0])]
    small = [s.radius for s in shapes if s.mechanism == "small"]
    faint = [s.contrast for s in shapes if s.mechanism == "faint"]
    normal = {s.radius for s in shapes if s.mechanism == "clean"}
    # continuous ranges across what a model can see, not one invisible size or shade
    assert min(small) == SMALLEST and max(small) == max(normal) and len(set(small)) >= 8
    assert min(faint) < 0.15 and max(faint) > 0.9


def test_every_cell_of_every_image_has_its_ground_truth(tmp_path):
    """cells.csv: one row per 28-pixel cell (one merged image token), the shape drawn there or background."""
    table = pd.read_csv(generate_demo(tmp_path, n_images=20, seed=0), keep_default_na=False)
    cells = pd.read_csv(tmp_path / CELLS_CSV, keep_default_na=False)
    for name, image_cells in cells.groupby("image_name"):
        width, height = Image.open(tmp_path / "images" / name).size
        assert len(image_cells) == (width // 28) * (height // 28)
        description = table[table.image_name == name].description.iloc[0]
        shapes = image_cells[image_cells.mechanism != "background"]
        assert sorted(f"{s.colour} {s.kind}" for s in shapes.itertuples()) == sorted(
            part.split(" at ")[0].removeprefix("a ").removeprefix("an ").removeprefix("small ")
            for part in description.split("; ")
        )
        for s in shapes.itertuples():  # the shape's own colour is at the centre of its cell
            centre = (
                Image.open(tmp_path / "images" / name)
                .convert("RGB")
                .getpixel((s.col * 28 + 14, s.row * 28 + 14))
            )
            assert centre != BACKGROUND or s.mechanism == "small"
    assert set(cells.mechanism) <= {"background", "clean", "faint", "small", "rare_combination"}
    assert set(cells.image_name) == set(table.image_name)
