from __future__ import annotations

import pandas as pd
import pytest

from halp.config import DataSettings
from halp.data.sample import sample_dataset, stratified_sample
from halp.data.schema import DatasetError, read_dataset, repair_ground_truth


@pytest.fixture()
def dataset(tmp_path):
    """A small CSV in the real HALP schema with two sources and a 70/30 relational mix."""
    images = tmp_path / "images"
    images.mkdir()
    rows = []
    for i in range(100):
        name = f"img_{i % 20}.jpg"
        (images / name).write_bytes(b"x")
        rows.append(
            dict(
                question_id=f"question_comb_{i}",
                image_name=name,
                question=f"Is thing {i} there?",
                gt_answer="yes",
                category="c",
                description="",
                has_image=True,
                dataset="AMBER" if i % 4 else "haloquest",
                is_relational=i % 10 < 7,
            )
        )
    csv = tmp_path / "data.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    return csv, images


def settings(csv, images, tmp_path, **kw):
    out = tmp_path / "out"
    return DataSettings(
        source=csv,
        images_dir=images,
        out=out / "samples.csv",
        rejected=out / "rejected.csv",
        embedded_images=out / "images",
        **kw,
    )


@pytest.mark.parametrize(
    ("stored", "expected", "flag"),
    [("n, o", "no", True), ("y, e, s", "yes", True), ("no", "no", False), ("red, blue", "red, blue", False)],
)
def test_ground_truth_joined_by_comma_is_repaired(stored, expected, flag):
    assert repair_ground_truth(stored) == (expected, flag)


def test_sampled_csv_flags_repaired_answers(dataset, tmp_path, caplog):
    csv, images = dataset
    table = pd.read_csv(csv)
    table.loc[3, "gt_answer"] = "n, o"
    table.to_csv(csv, index=False)
    sample = sample_dataset(settings(csv, images, tmp_path, sample_size=100))
    row = sample.set_index("question_id").loc["question_comb_3"]
    assert row.gt_answer == "no" and row.gt_repaired
    assert "repaired 1 ground truths" in caplog.text and "question_comb_3" in caplog.text


def test_a_failed_sample_leaves_no_old_sample_behind(dataset, tmp_path):
    csv, images = dataset
    sample_dataset(settings(csv, images, tmp_path, sample_size=10))
    out = tmp_path / "out"
    assert pd.read_csv(out / "rejected.csv").empty, "written, with its header, even when nothing is left out"
    pd.read_csv(csv).drop(columns="question").to_csv(csv, index=False)
    with pytest.raises(DatasetError, match="lacks required column"):
        sample_dataset(settings(csv, images, tmp_path, sample_size=10))
    assert not (out / "samples.csv").exists() and not (out / "rejected.csv").exists()


def test_stratified_sample_keeps_proportions_and_is_seeded(dataset, tmp_path):
    csv, images = dataset
    first = sample_dataset(settings(csv, images, tmp_path, sample_size=40, seed=1))
    again = pd.read_csv(tmp_path / "out" / "samples.csv")
    assert len(first) == 40 and first.question_id.is_unique
    assert list(again.question_id) == list(first.question_id)
    assert first.is_relational.mean() == pytest.approx(0.7, abs=0.03)
    assert (first.dataset == "haloquest").mean() == pytest.approx(0.25, abs=0.03)
    other = sample_dataset(settings(csv, images, tmp_path, sample_size=40, seed=2))
    assert set(other.question_id) != set(first.question_id)


def test_single_member_strata_do_not_break_sampling():
    table = pd.DataFrame(
        {
            "dataset": ["a"] * 9 + ["rare"],
            "is_relational": [True] * 10,
            "question_id": [str(i) for i in range(10)],
        }
    )
    assert len(stratified_sample(table, 5, seed=0)) == 5
    assert len(stratified_sample(table, 50, seed=0)) == 10


def test_mapped_column_names(dataset, tmp_path):
    csv, images = dataset
    pd.read_csv(csv).rename(columns={"gt_answer": "answer", "image_name": "img"}).to_csv(csv, index=False)
    with pytest.raises(DatasetError, match=r"lacks required column\(s\) \['image_name', 'gt_answer'\]"):
        read_dataset(csv, images, {}, drop_invalid=False)
    table, _ = read_dataset(csv, images, {"gt_answer": "answer", "image_name": "img"}, drop_invalid=False)
    assert len(table) == 100


def test_missing_column_says_how_to_map_it(dataset):
    csv, images = dataset
    pd.read_csv(csv).drop(columns=["question"]).to_csv(csv, index=False)
    with pytest.raises(DatasetError, match=r"lacks required column\(s\) \['question'\].*data.columns"):
        read_dataset(csv, images, {}, drop_invalid=False)


def test_duplicate_ids_name_the_rows(dataset):
    csv, images = dataset
    table = pd.read_csv(csv)
    table.loc[5, "question_id"] = "question_comb_2"
    table.to_csv(csv, index=False)
    with pytest.raises(DatasetError, match=r"duplicate question_id \(2 rows\)") as err:
        read_dataset(csv, images, {}, drop_invalid=False)
    assert "CSV line 4 ('question_comb_2')" in str(err.value)
    assert "CSV line 7 ('question_comb_2')" in str(err.value)


def test_empty_question_and_missing_image_name_rows_and_fix(dataset, tmp_path):
    csv, images = dataset
    table = pd.read_csv(csv)
    table.loc[10, "question"] = "   "
    table.loc[11, "image_name"] = "nowhere.jpg"
    table.to_csv(csv, index=False)
    with pytest.raises(DatasetError) as err:
        read_dataset(csv, images, {}, drop_invalid=False)
    message = str(err.value)
    assert "empty question (1 rows)" in message and "CSV line 12 ('question_comb_10')" in message
    assert "image file not found" in message and "CSV line 13 ('question_comb_11')" in message
    assert "data.images_dir" in message and "drop_invalid" in message

    sample = sample_dataset(settings(csv, images, tmp_path, sample_size=100, drop_invalid=True))
    assert len(sample) == 98
    rejected = pd.read_csv(tmp_path / "out" / "rejected.csv").set_index("question_id")
    assert rejected.loc["question_comb_10", "invalid_reason"] == "empty question"
    assert rejected.loc["question_comb_11", "invalid_reason"] == "image file not found"


def test_a_folder_a_symlink_loop_and_a_dangling_link_are_told_apart_from_a_missing_file(dataset):
    csv, images = dataset
    table = pd.read_csv(csv)
    (images / "a_folder.jpg").mkdir()
    (images / "loop.jpg").symlink_to(images / "loop.jpg")
    (images / "dangling.jpg").symlink_to(images / "gone.jpg")
    table.loc[[3, 4, 5], "image_name"] = ["a_folder.jpg", "loop.jpg", "dangling.jpg"]
    table.to_csv(csv, index=False)
    with pytest.raises(DatasetError) as err:
        read_dataset(csv, images, {}, drop_invalid=False)
    message = str(err.value)
    assert "a folder, not an image file under" in message and "CSV line 5 ('question_comb_3')" in message
    assert "a symlink loop under" in message and "CSV line 6 ('question_comb_4')" in message
    assert "a symlink to a missing file under" in message and "CSV line 7 ('question_comb_5')" in message
    assert "image file not found" not in message
    _, rejected = read_dataset(csv, images, {}, drop_invalid=True)
    assert rejected.invalid_reason.tolist() == [
        "a folder, not an image file",
        "a symlink loop",
        "a symlink to a missing file",
    ]


def test_lines_are_counted_in_the_file_after_a_quoted_multi_line_question(dataset):
    csv, images = dataset
    table = pd.read_csv(csv)
    table.loc[1, "question"] = "Is the shape\non the left\nred?"
    table.loc[4, "image_name"] = "nowhere.jpg"
    table.to_csv(csv, index=False)
    with pytest.raises(DatasetError, match=r"CSV line 8 \('question_comb_4'\)"):  # rows 2-3 span 3 lines
        read_dataset(csv, images, {}, drop_invalid=False)
    with csv.open("a") as more:
        more.write("\n\n")  # blank lines at the end: no rows, as pandas reads them
    with pytest.raises(DatasetError, match=r"CSV line 8 \('question_comb_4'\)"):
        read_dataset(csv, images, {}, drop_invalid=False)


def test_missing_csv(tmp_path):
    with pytest.raises(DatasetError, match="halp prepare-data"):
        read_dataset(tmp_path / "none.csv", tmp_path, {}, drop_invalid=False)
