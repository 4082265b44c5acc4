"""The demo's questions about a shape in the image, found from their text, and placed in their cell."""

from __future__ import annotations

import pandas as pd

from halp.data.demo import CELLS_CSV, generate_demo
from halp.lens.accuracy import asked_shapes


def test_every_question_about_a_present_shape_is_found_with_its_cell(tmp_path):
    questions = pd.read_csv(generate_demo(tmp_path, n_images=30, seed=0), keep_default_na=False)
    asked = asked_shapes(questions)
    about_present = questions[
        ((questions.category == "existence") & (questions.gt_answer == "yes"))
        | (questions.category == "attribute")
    ]
    assert sorted(asked.question_id) == sorted(about_present.question_id)
    cells = pd.read_csv(tmp_path / CELLS_CSV, keep_default_na=False)
    placed = cells.merge(asked, on=["image_name", "colour", "kind"])
    assert len(placed) == len(asked), "each asked shape sits in exactly one cell of its image"
