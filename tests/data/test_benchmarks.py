"""The benchmarks' published files, written here in their exact formats, read through `halp sample`."""

from __future__ import annotations

import hashlib
import io
import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from halp.config import DataSettings
from halp.data.benchmarks import HALOQUEST_TYPES
from halp.data.sample import sample_dataset
from halp.data.schema import DatasetError
from halp.label.judges import RulesJudge
from halp.store import open_embeddings
from tests.conftest import halp, set_params


def write_images(folder, names):
    folder.mkdir(exist_ok=True)
    for i, name in enumerate(names):
        Image.new("RGB", (56, 56), (i * 40 % 256, 0, 0)).save(folder / name)


def image_bytes(i, kind="JPEG"):
    buffer = io.BytesIO()
    Image.new("RGB", (56, 56), (0, i * 40 % 256, 0)).save(buffer, format=kind)
    return buffer.getvalue()


HF_IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])  # the datasets library's Image


def write_pope_parquet(folder):
    """POPE as lmms-lab publishes it on the hub: data/test-*.parquet, the image inside each row."""
    rows = [(i, split, i % 3) for split in ("adversarial", "popular", "random") for i in range(4)]
    table = pa.table(
        {
            "id": [str(n) for n in range(len(rows))],
            "question_id": [str(i + 1) for i, _, _ in rows],
            "question": [f"Is there a thing {i} in the image?" for i, _, _ in rows],
            "answer": ["yes" if i % 2 == 0 else "no" for i, _, _ in rows],
            "image_source": [f"COCO_val2014_{k:012d}" for _, _, k in rows],
            "image": pa.array([{"bytes": image_bytes(k), "path": None} for _, _, k in rows], type=HF_IMAGE),
            "category": [split for _, split, _ in rows],
        }
    )
    (folder / "data").mkdir(parents=True)
    pq.write_table(table.slice(0, 6), folder / "data" / "test-00000-of-00002.parquet")
    pq.write_table(table.slice(6), folder / "data" / "test-00001-of-00002.parquet")


def settings(tmp_path, data_format, source, **kw):
    out = tmp_path / "out"
    return DataSettings(
        format=data_format,
        source=source,
        images_dir=tmp_path / "images",
        out=out / "samples.csv",
        rejected=out / "rejected.csv",
        sample_size=kw.pop("sample_size", 1000),
        **{"embedded_images": out / "images"} | kw,
    )


def pope_lines(split_offset=0):
    """POPE's own lines: question ids from 1 in every file, COCO image names, yes/no labels."""
    return [
        {
            "question_id": i + 1,
            "image": f"COCO_val2014_{(i + split_offset) % 3:012d}.jpg",
            "text": f"Is there a {thing} in the image?",
            "label": "yes" if i % 2 == 0 else "no",
        }
        for i, thing in enumerate(["dog", "snowboard", "car", "cup"])
    ]


def write_pope(folder):
    folder.mkdir()
    for offset, split in enumerate(["random", "popular", "adversarial"]):
        lines = "\n".join(json.dumps(item) for item in pope_lines(offset))
        (folder / f"coco_pope_{split}.json").write_text(lines + "\n")


@pytest.fixture()
def pope(tmp_path):
    write_pope(tmp_path / "pope")
    write_images(tmp_path / "images", [f"COCO_val2014_{i:012d}.jpg" for i in range(3)])
    return tmp_path / "pope"


def test_pope_files_as_published_give_splits_as_categories(tmp_path, pope):
    sample = sample_dataset(settings(tmp_path, "pope", pope)).set_index("question_id")
    assert len(sample) == 12, "ids restart in every file: each file's question 1 is its own question"
    first = sample.loc["coco_pope_random/1"]
    assert (first.question, first.gt_answer, first.category, first.dataset) == (
        "Is there a dog in the image?",
        "yes",
        "random",
        "coco_pope",
    )
    assert set(sample.category) == {"random", "popular", "adversarial"}
    single = sample_dataset(settings(tmp_path, "pope", pope / "coco_pope_adversarial.json"))
    assert set(single.category) == {"adversarial"} and len(single) == 4


def test_pope_bad_lines_are_each_named(tmp_path, pope):
    lines = [json.dumps(item) for item in pope_lines()]
    lines[1] = lines[1][:-1]  # cut short
    lines[2] = json.dumps({"question_id": 3, "image": "x.jpg", "label": "no"})  # no text
    lines.append(json.dumps(pope_lines()[3] | {"label": "maybe"}))
    (pope / "coco_pope_random.json").write_text("\n".join(lines))
    with pytest.raises(DatasetError) as err:
        sample_dataset(settings(tmp_path, "pope", pope))
    message = str(err.value)
    assert "coco_pope_random.json line 2: not a JSON object" in message
    assert "coco_pope_random.json line 3: lacks ['text']" in message
    assert "coco_pope_random.json line 5: label 'maybe' is neither yes nor no" in message
    assert "3 problem(s)" in message and "fix:" in message

    lines = [json.dumps(item) for item in pope_lines()]
    (pope / "coco_pope_random.json").write_text("\n".join([*lines, lines[0]]))
    with pytest.raises(DatasetError) as err:
        sample_dataset(settings(tmp_path, "pope", pope))
    assert "id coco_pope_random/1 appears 2 times: coco_pope_random.json line 1, " in str(err.value)


def test_pope_missing_image_and_missing_source_say_where(tmp_path, pope):
    (tmp_path / "images" / "COCO_val2014_000000000002.jpg").unlink()
    with pytest.raises(DatasetError) as err:
        sample_dataset(settings(tmp_path, "pope", pope))
    assert "coco_pope_adversarial.json line 1 ('coco_pope_adversarial/1')" in str(err.value)
    assert "data.images_dir" in str(err.value)
    with pytest.raises(DatasetError, match=r"holds no \*pope_\*\.json: set data\.source"):
        sample_dataset(settings(tmp_path, "pope", tmp_path / "images"))


HALOQUEST_ROWS = [
    ("img_0.png", "false premises", "What is the dog holding?", "There is no dog; No dog is visible"),
    ("img_1.png", "visual challenge", "What colour is the car?", '"Red, with a white roof"; red'),
    ("img_2.png", "insufficient context", "Who painted this?", "It cannot be determined; Unknown"),
    ("img_0.png", "visual challenge", "How many cats are there?", "two; 2"),
]


def write_haloquest(csv, images):
    """haloquest-eval.csv as published: an unnamed index column first, answers joined by ";"."""
    table = pd.DataFrame(
        [
            {
                "image_name": image,
                "url": f"https://example.org/{image}",
                "image type": "real",
                "hallucination type": kind,
                "question": question,
                "groundtruth responses": answers,
                "split": "eval",
            }
            for image, kind, question, answers in HALOQUEST_ROWS
        ]
    )
    table.to_csv(csv)
    write_images(images, ["img_0.png", "img_1.png", "img_2.png"])


@pytest.fixture()
def haloquest(tmp_path):
    write_haloquest(tmp_path / "haloquest-eval.csv", tmp_path / "images")
    return tmp_path / "haloquest-eval.csv"


def test_haloquest_csv_as_published(tmp_path, haloquest):
    assert haloquest.read_text().startswith(",image_name,url,"), "the published header"
    sample = sample_dataset(settings(tmp_path, "haloquest", haloquest)).set_index("question_id")
    assert list(sample.sort_index().index) == [f"haloquest-eval/{i}" for i in range(4)]
    colour = sample.loc["haloquest-eval/1"]
    assert (colour.gt_answer, colour.category, colour.dataset) == (
        '"Red, with a white roof"; red',
        "visual_challenge",
        "haloquest",
    )
    assert set(sample.category) == {"false_premise", "visual_challenge", "insufficient_context"}
    from_folder = sample_dataset(settings(tmp_path, "haloquest", tmp_path))
    assert len(from_folder) == 4


def test_haloquest_bad_rows_and_missing_images_are_named(tmp_path, haloquest):
    table = pd.read_csv(haloquest, index_col=0)
    table.loc[2, "hallucination type"] = "made up"
    table.loc[3, "groundtruth responses"] = " "
    table.to_csv(haloquest)
    with pytest.raises(DatasetError) as err:
        sample_dataset(settings(tmp_path, "haloquest", haloquest))
    assert "line 4: hallucination type 'made up'" in str(err.value)
    assert "line 5: no groundtruth response" in str(err.value)

    pd.read_csv(haloquest, index_col=0).drop(columns="url").to_csv(haloquest)
    with pytest.raises(DatasetError, match="lacks HaloQuest's column\\(s\\) \\['url'\\]"):
        sample_dataset(settings(tmp_path, "haloquest", haloquest))

    table = pd.DataFrame(
        [{"image_name": "lost.png", "url": "https://example.org/lost.png", "image type": "generated",
          "hallucination type": "visual challenge", "question": "What is it?", "groundtruth responses": "a",
          "split": "eval"}]
    )  # fmt: skip
    table.to_csv(haloquest)
    with pytest.raises(DatasetError) as err:
        sample_dataset(settings(tmp_path, "haloquest", haloquest))
    lost = "haloquest-eval.csv line 2 ('haloquest-eval/0') from https://example.org/lost.png"
    assert lost in str(err.value)
    assert "halp downloads nothing" in str(err.value)


def test_pope_parquet_from_the_hub_writes_each_image_once_by_content(tmp_path):
    write_pope_parquet(tmp_path / "POPE")
    data = settings(tmp_path, "pope", tmp_path / "POPE", embedded_images=tmp_path / "embedded")
    sample = sample_dataset(data).set_index("question_id")
    assert len(sample) == 12 and set(sample.category) == {"adversarial", "popular", "random"}
    row = sample.loc["pope/random/3"]
    assert (row.gt_answer, row.dataset, row.image_name) == ("yes", "pope", "COCO_val2014_000000000002")
    written = sorted(p.name for p in (tmp_path / "embedded").iterdir())
    assert written == sorted(f"{hashlib.sha256(image_bytes(k)).hexdigest()}.jpg" for k in range(3))
    assert (tmp_path / "embedded" / row.image_path.split("/")[-1]).read_bytes() == image_bytes(2)
    assert row.image_sha256 == hashlib.sha256(image_bytes(2)).hexdigest()
    smaller = sample_dataset(data.model_copy(update={"sample_size": 2}))
    assert len(list((tmp_path / "embedded").iterdir())) == smaller.image_sha256.nunique(), (
        "this sample's only"
    )


def test_hf_dataset_folder_with_a_column_map(tmp_path):
    """A `save_to_disk` folder: Arrow stream files, bytes or no bytes in the image column."""
    folder = tmp_path / "my_vqa"
    (folder / "train").mkdir(parents=True)
    cells = [{"bytes": image_bytes(i % 2, "PNG"), "path": f"scene_{i % 2}.png"} for i in range(4)]
    cells[3] = {"bytes": b"not an image", "path": "broken.png"}
    table = pa.table(
        {
            "qid": ["a", "b", "c", "d"],
            "img": pa.array(cells, type=HF_IMAGE),
            "prompt": ["What is shown?", "Is it green?", "Is it red?", "What colour?"],
            "label": ["a square", "yes", "no", "green"],
            "kind": ["open", "yes_no", "yes_no", "open"],
        }
    )
    with pa.ipc.new_stream(folder / "train" / "data-00000-of-00001.arrow", table.schema) as writer:
        writer.write_table(table)
    (folder / "train" / "state.json").write_text("{}")
    columns = {
        "question_id": "qid",
        "image_name": "img",
        "question": "prompt",
        "gt_answer": "label",
        "category": "kind",
    }
    data = settings(tmp_path, "hf", folder, columns=columns, embedded_images=tmp_path / "embedded")
    with pytest.raises(DatasetError) as err:
        sample_dataset(data)
    assert "embedded bytes that are not an image" in str(err.value)
    assert "data-00000-of-00001.arrow row 4 ('d')" in str(err.value)
    sample = sample_dataset(data.model_copy(update={"drop_invalid": True})).set_index("question_id")
    assert sorted(sample.index) == ["a", "b", "c"] and set(sample.dataset) == {"my_vqa"}
    assert (sample.image_name["b"], sample.category["b"], sample.gt_answer["b"]) == (
        "scene_1.png",
        "yes_no",
        "yes",
    )
    assert len(list((tmp_path / "embedded").iterdir())) == 2, "scene_0.png twice: one file"
    rejected = pd.read_csv(tmp_path / "out" / "rejected.csv")
    assert list(rejected.question_id) == ["d"] and "image_bytes" not in rejected

    jsonl = tmp_path / "questions.jsonl"  # JSON Lines with image paths, under data.images_dir
    write_images(tmp_path / "images", ["scene.png"])
    lines = [
        {"qid": "x", "img": "scene.png", "prompt": "What?", "label": "a dog"},
        {"qid": "y", "prompt": "?"},
    ]
    jsonl.write_text("\n".join(json.dumps(line) for line in lines))
    with pytest.raises(DatasetError) as err:
        sample_dataset(settings(tmp_path, "hf", jsonl, columns=columns))
    assert "questions.jsonl line 2 ('y')" in str(err.value)


AMBER_QUERIES = [
    {"id": 1, "image": "AMBER_1.jpg", "query": "Describe this image."},
    {"id": 2, "image": "AMBER_2.jpg", "query": "Describe this image."},
    {"id": 1005, "image": "AMBER_1.jpg", "query": "Is the dog running in this image?"},
    {"id": 1006, "image": "AMBER_2.jpg", "query": "Is there a car in this image?"},
]


def amber_annotations():
    """annotations.json as AMBER orders it: item id - 1 holds id; generative items are ids 1-1004."""
    items = [
        {"id": i, "type": "generative", "truth": ["tree", "sky"], "hallu": ["car", "dog"]}
        for i in range(1, 1005)
    ]
    items.append({"id": 1005, "type": "discriminative-attribute-state", "truth": "yes"})
    items.append({"id": 1006, "type": "discriminative-hallucination", "truth": "no"})
    return items


@pytest.fixture()
def amber(tmp_path):
    data = tmp_path / "AMBER" / "data"
    (data / "query").mkdir(parents=True)
    (data / "query" / "query_all.json").write_text(json.dumps(AMBER_QUERIES))
    (data / "annotations.json").write_text(json.dumps(amber_annotations()))
    write_images(tmp_path / "images", ["AMBER_1.jpg", "AMBER_2.jpg"])
    return data


def test_amber_query_and_annotations_as_published(tmp_path, amber):
    sample = sample_dataset(settings(tmp_path, "amber", amber)).set_index("question_id")
    assert sorted(sample.index) == ["amber/1", "amber/1005", "amber/1006", "amber/2"]
    assert json.loads(sample.gt_answer["amber/1"]) == {"truth": ["tree", "sky"], "hallu": ["car", "dog"]}
    assert (sample.gt_answer["amber/1005"], sample.category["amber/1005"]) == (
        "yes",
        "discriminative_attribute_state",
    )
    assert set(sample.category) == {
        "generative",
        "discriminative_attribute_state",
        "discriminative_hallucination",
    }
    assert set(sample.dataset) == {"amber"}
    one_file = sample_dataset(settings(tmp_path, "amber", amber / "query" / "query_all.json"))
    assert len(one_file) == 4


def test_amber_bad_items_are_named_by_place_and_id(tmp_path, amber):
    queries = [
        *AMBER_QUERIES,
        {"id": 7, "image": "AMBER_1.jpg"},
        {"id": 9999, "image": "x.jpg", "query": "?"},
    ]
    annotations = amber_annotations()
    annotations[1004]["truth"] = "maybe"
    (amber / "query" / "query_all.json").write_text(json.dumps(queries))
    (amber / "annotations.json").write_text(json.dumps(annotations))
    with pytest.raises(DatasetError) as err:
        sample_dataset(settings(tmp_path, "amber", amber))
    message = str(err.value)
    assert (
        "query_all.json item 3: annotation 1005 ('discriminative-attribute-state') holds neither" in message
    )
    assert "query_all.json item 5: lacks ['query']" in message
    assert "query_all.json item 6: id 9999 has no annotation" in message

    (amber / "annotations.json").write_text(json.dumps(amber_annotations()))
    (amber / "query" / "query_all.json").write_text(json.dumps([*AMBER_QUERIES, AMBER_QUERIES[0]]))
    with pytest.raises(DatasetError) as err:
        sample_dataset(settings(tmp_path, "amber", amber))
    assert "id amber/1 appears 2 times: query_all.json item 1 (id 1), query_all.json item 5 (id 1)" in str(
        err.value
    )

    (amber / "query" / "query_all.json").write_text(json.dumps(AMBER_QUERIES)[:-3])
    with pytest.raises(DatasetError, match=r"query_all\.json line 1 column \d+: not JSON"):
        sample_dataset(settings(tmp_path, "amber", amber))
    (amber / "query" / "query_all.json").write_text(json.dumps(AMBER_QUERIES))
    (amber / "annotations.json").unlink()
    with pytest.raises(DatasetError, match=r"annotations\.json not found: set data\.source"):
        sample_dataset(settings(tmp_path, "amber", amber))


GENERATIVE = json.dumps({"truth": ["tree", "sky"], "hallu": ["car", "dog", "traffic light"]})


@pytest.mark.parametrize(
    ("category", "truth", "answer", "hallucinated"),
    [
        ("random", "yes", "Yes, there is a dog.", False),  # POPE: the answer's polarity against the label
        ("adversarial", "no", "There is a snowboard.", True),
        ("adversarial", "no", "No, there is not.", False),
        ("visual_challenge", '"Red, with a white roof"; red', "It is red.", False),  # any accepted answer
        ("visual_challenge", "two; 2", "There are 3 cats.", True),
        ("visual_challenge", "two; 2", "I see 2 cats.", False),
        ("insufficient_context", "It cannot be determined; Unknown", "It is impossible to tell.", False),
        ("insufficient_context", "It cannot be determined; Unknown", "Vincent van Gogh.", True),
        ("insufficient_context", "It cannot be determined; Unknown", "The painter is unknown.", False),
        ("false_premise", "There is no dog; No dog is visible", "There is no dog in the image.", False),
        ("false_premise", "There is no dog; No dog is visible", "The dog holds a ball.", True),
        ("generative", GENERATIVE, "A car is parked under a tree.", True),  # AMBER: names an absent object
        ("generative", GENERATIVE, "Two dogs play on the grass.", True),  # its plural
        ("generative", GENERATIVE, "A red traffic light by the road.", True),  # a name of two words
        (
            "generative",
            GENERATIVE,
            "A cartoon of a tree under a blue sky.",
            False,
        ),  # "car" only inside a word
        ("discriminative_hallucination", "no", "No, there is no car.", False),
        ("discriminative_attribute_state", "yes", "No.", True),
    ],
)
def test_the_rules_judge_reads_each_benchmark_by_its_own_rule(category, truth, answer, hallucinated):
    verdict = RulesJudge()("question?", answer, truth, category)
    assert verdict.hallucinated is hallucinated, verdict.reason


@pytest.mark.slow
@pytest.mark.parametrize("published", ["pope_json_lines", "pope_parquet", "haloquest"])
def test_benchmark_through_extract_label_and_probe(workspace, published):
    """A benchmark's files as published -> `halp sample` -> `halp extract` (a tiny Qwen2-VL) -> `halp label`
    by the benchmark's own rule -> `halp probe` (whose report says why when the labels hold one class)."""
    source = workspace / "benchmark"
    if published == "pope_parquet":
        write_pope_parquet(source)
    elif published == "pope_json_lines":
        write_pope(source)
        write_images(workspace / "images", [f"COCO_val2014_{i:012d}.jpg" for i in range(3)])
    else:
        source.mkdir()
        write_haloquest(source / "haloquest-eval.csv", workspace / "images")
    data_format = published.split("_")[0]
    set_params(
        workspace, {"data.format": data_format, "data.source": "benchmark", "data.images_dir": "images"}
    )
    for command in ("sample", "extract", "label", "probe"):
        halp(command, *([] if command == "sample" else ["--model", "qwen2_vl"]), cwd=workspace)
    sample = pd.read_csv(workspace / "sampled" / "samples.csv", keep_default_na=False)
    meta = open_embeddings(workspace / "embeddings" / "qwen2_vl").meta.set_index("sample_id")
    labels = pd.read_csv(workspace / "data" / "labels" / "qwen2_vl.csv").set_index("sample_id")
    assert sorted(labels.index) == sorted(sample.question_id) and set(meta.source) == set(sample.dataset)
    assert (
        set(labels.category)
        == set(sample.category)
        == ({"random", "popular", "adversarial"} if data_format == "pope" else set(HALOQUEST_TYPES))
    )
    for sample_id, row in labels.iterrows():
        truth = meta.ground_truth[sample_id]
        expected = RulesJudge()(meta.question[sample_id], meta.answer[sample_id], truth, row.category)
        assert (row.hallucinated, row.reason) == (expected.hallucinated, expected.reason)
    report = json.loads((workspace / "metrics" / "probes" / "qwen2_vl.json").read_text())
    assert report["n_samples"] == len(sample) and report["status"] in ("ok", "degenerate")


@pytest.mark.slow
def test_amber_through_extract_label_and_probe(workspace):
    """AMBER as published through every stage a probe needs, on a tiny Qwen2-VL: its random answers name
    none of a description's absent objects (correct) and answer no yes/no question (hallucinated), so
    both classes reach the probe."""
    data = workspace / "AMBER" / "data"
    (data / "query").mkdir(parents=True)
    images = [f"AMBER_{i}.jpg" for i in range(10)]
    queries = [{"id": i, "image": images[i % 10], "query": "Describe this image."} for i in range(1, 21)]
    queries += [{"id": 1004 + i, "image": images[i % 10], "query": "Is there a car?"} for i in range(1, 21)]
    annotations = amber_annotations()[:1004]
    annotations += [
        {"id": 1004 + i, "type": "discriminative-hallucination", "truth": "no"} for i in range(1, 21)
    ]
    (data / "query" / "query_all.json").write_text(json.dumps(queries))
    (data / "annotations.json").write_text(json.dumps(annotations))
    write_images(workspace / "amber_images", images)
    set_params(
        workspace,
        {
            "data.format": "amber",
            "data.source": "AMBER/data",
            "data.images_dir": "amber_images",
            "data.sample_size": 40,
        },
    )
    for command in ("sample", "extract", "label", "probe"):
        halp(command, *([] if command == "sample" else ["--model", "qwen2_vl"]), cwd=workspace)
    labels = pd.read_csv(workspace / "data" / "labels" / "qwen2_vl.csv")
    generative = labels[labels.category == "generative"]
    assert len(labels) == 40 and generative.reason.str.startswith("names").all()
    assert labels.hallucinated.nunique() == 2, labels.reason.value_counts()
    report = json.loads((workspace / "metrics" / "probes" / "qwen2_vl.json").read_text())
    assert report["status"] == "ok" and report["n_samples"] == 40
    assert report["transfer"]["dataset"]["skipped_because"] == "one group only (amber)"
