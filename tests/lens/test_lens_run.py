"""`halp prepare-corpus`, `halp contextual-bank` and `halp lens` as a user runs them."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from halp.config import load_params
from halp.data.corpus import read_corpus
from halp.data.images import load_image
from halp.extract.engine import Extractor
from halp.lens.accuracy import asked_shapes
from halp.lens.lenses import Lenses
from halp.lens.words import Words
from halp.models.loading import load_model
from halp.store import open_bank, open_lens
from tests.chat_server import chat_server
from tests.conftest import halp, set_params
from tests.lens.test_judge import says_yes_to_red

MODEL = "qwen2_5_vl"


def test_readings_metrics_and_page_for_every_image(workspace):
    set_params(
        workspace,
        {
            "corpus": {"out": "corpus.txt", "sentences": 40},
            "lens": {"corpus": "corpus.txt", "ground_truth": "demo/cells.csv"},
        },
    )
    halp("prepare-corpus", cwd=workspace)
    halp("contextual-bank", "--model", MODEL, cwd=workspace)
    for command in ("extract", "label", "lens"):  # the labels join the readings with the answers
        halp(command, "--model", MODEL, cwd=workspace)
    readings = open_lens(workspace / "data/lens" / MODEL)
    bank = open_bank(workspace / "data/banks" / MODEL)
    assert readings.layer_names == ["input", "0", "1", "2", "3"] and readings.errors.empty
    first = readings.meta.iloc[0]
    rows = readings.per_image("latent_rows")[0]  # [n, 1 + L, k]
    assert rows.shape == (first.n_image_tokens, 5, 5) and rows.max() < len(bank.meta)

    params = load_params(workspace / "params.yaml")
    loaded = load_model(params.model(MODEL))
    extractor = Extractor(loaded, [0, 1, 2, 3], max_new_tokens=1, top_k=1)
    image = load_image(str(workspace / "demo/images" / first.image_id))
    tokens = extractor.image_tokens(extractor.prepare([image], [first.question]))[0]  # [5, n, H]
    again = Lenses(loaded, bank, k=5).read(torch.from_numpy(tokens.reshape(-1, tokens.shape[-1])))
    expected = again.latent_rows.reshape(5, -1, 5).transpose(0, 1).numpy()
    np.testing.assert_array_equal(rows, expected)

    metrics = json.loads((workspace / "metrics/lens" / f"{MODEL}.json").read_text())
    assert metrics["n_images"] == len(readings.meta) and list(metrics["layers"]) == readings.layer_names
    for layer in metrics["layers"].values():
        assert np.isclose(sum(layer["top1_from_bank_layer"].values()), 1.0)
    # Accuracy against the demo world, counted again by hand for one lens and layer: LatentLens' top-1
    # word at block 0 naming the colour of the shape in the token's cell.
    cells = pd.read_csv(workspace / "demo/cells.csv", keep_default_na=False).set_index(
        ["image_name", "row", "col"]
    )
    words = Words(bank, read_corpus(workspace / "corpus.txt"), loaded.processor.tokenizer)
    hits = []
    for image, top in zip(readings.meta.itertuples(), readings.per_image("latent_rows"), strict=True):
        for t in range(image.n_image_tokens):
            cell = cells.loc[(image.image_id, t // image.grid_w, t % image.grid_w)]
            if cell.mechanism != "background":
                hits.append(words.of_rows(top[t, readings.layer_names.index("0"), :1])[0] == cell.colour)
    accuracy = metrics["accuracy"]
    share, low, high = accuracy["latent"]["0"]["shape_colour_top1"]
    assert accuracy["tokens"]["shape"] == len(hits) and share == pytest.approx(np.mean(hits))
    assert low <= share <= high and 0 < accuracy["chance"]["shape_colour_top1"] < 1
    assert set(accuracy) == {"chance", "tokens", "latent", "embedding", "logit"}
    samples = pd.read_csv(workspace / "sampled/samples.csv", keep_default_na=False)
    asked = asked_shapes(samples[samples.image_name.isin(readings.meta.image_id)])
    misses = metrics["model_misses"]["latent"]["0"]
    assert sum(side[1] for groups in misses.values() for side in groups.values()) == len(asked)
    page = (workspace / "reports/lens" / f"{MODEL}.html").read_text()
    shown = min(6, len(readings.meta))
    assert page.count('class="picture"') == shown and page.count('class="grid"') == shown * 5 * 3
    assert page.count("<option") == 5 + 3, "a layer selector and a lens selector"
    marked = page.count('class="cell right"') + page.count('class="cell wrong"')
    assert marked == readings.meta.head(shown).n_image_tokens.sum() * 5 * 3, "every cell's truth is known"

    again = halp("lens", "--model", MODEL, cwd=workspace)
    assert "already done" in again.stderr

    # With an LLM judge (a local server here): 3 tokens, each judged for every lens at every layer.
    seen = []
    with chat_server(says_yes_to_red, seen) as url:
        set_params(workspace, {"lens.judge": "llm", "lens.llm": {"url": url, "tokens": 3}})
        halp("lens", "--model", MODEL, cwd=workspace)
    judged = json.loads((workspace / "metrics/lens" / f"{MODEL}.json").read_text())["judge"]
    assert judged["tokens"] == 3 and len(judged["judgements"]) == 3 * 5 * 3
    asked = len({json.dumps(body, sort_keys=True) for _, body in seen})
    assert len(seen) == asked, (
        "each distinct request asked once: a repeated one is answered by the kept reply"
    )
    assert all(j["describes"] == ("red" in j["words"]) and j["reason"] for j in judged["judgements"])
    assert set(judged["share"]) == {"latent", "embedding", "logit"} and judged["errors"] == 0

    # An endpoint that fails once for a moment (503) and answers one request off format: the judgements
    # of that request are its errors, the others count; the rerun asks that one again, alone.
    flaky, off, first_run = [], [], [True]

    def now_and_then(body: dict):
        key = json.dumps(body, sort_keys=True)
        if len(flaky) == 2:
            return 503, "overloaded"
        if len(flaky) == 5 and not off:
            off.append(key)
        return "Perhaps." if key in off and first_run[0] else says_yes_to_red(body)

    with chat_server(now_and_then, flaky) as url:
        set_params(workspace, {"lens.llm": {"url": url, "tokens": 3, "retry_seconds": [0.01]}})
        halp("lens", "--model", MODEL, cwd=workspace)
        judged = json.loads((workspace / "metrics/lens" / f"{MODEL}.json").read_text())["judge"]
        failed = [j for j in judged["judgements"] if j["describes"] is None]
        assert failed and judged["errors"] == len(failed) and len(judged["judgements"]) == 3 * 5 * 3
        assert all(j["reason"].startswith("error: the lens judge replied 'Perhaps.'") for j in failed)
        assert len(flaky) == asked + 1 + len(failed) - 1, "the 503 once more; an unread reply is not kept"
        first_run[0] = False
        halp("lens", "--model", MODEL, cwd=workspace)
    judged = json.loads((workspace / "metrics/lens" / f"{MODEL}.json").read_text())["judge"]
    assert len(flaky) == asked + len(failed) + 1 and judged["errors"] == 0


def test_the_lens_refuses_a_half_built_or_foreign_bank_and_a_completed_bank_makes_it_stale(workspace):
    set_params(
        workspace,
        {
            "corpus": {"out": "corpus.txt", "sentences": 40},
            "lens": {"corpus": "corpus.txt", "ground_truth": "demo/cells.csv"},
        },
    )
    halp("prepare-corpus", cwd=workspace)
    for model in ("qwen2_vl", MODEL):
        halp("contextual-bank", "--model", model, cwd=workspace)
    banks = workspace / "data/banks"
    halp("lens", "--model", MODEL, cwd=workspace)

    manifest = (banks / MODEL / "manifest.json").read_text()
    (banks / MODEL / "manifest.json").unlink()  # as a killed `halp contextual-bank` leaves it
    refused = halp("lens", "--model", MODEL, cwd=workspace, check=False)
    assert refused.returncode == 2 and "is not complete" in refused.stderr, refused.stderr
    assert f"halp contextual-bank --model {MODEL}" in refused.stderr
    finished = halp("contextual-bank", "--model", MODEL, cwd=workspace)  # the next build finishes it
    assert "already done" in finished.stderr and (banks / MODEL / "manifest.json").read_text() == manifest
    assert "already done" in halp("lens", "--model", MODEL, cwd=workspace).stderr, "the same bank again"

    shutil.rmtree(banks / MODEL)
    shutil.copytree(banks / "qwen2_vl", banks / MODEL)  # another model's bank in its place
    refused = halp("lens", "--model", MODEL, cwd=workspace, check=False)
    assert refused.returncode == 2 and "was built for qwen2_vl" in refused.stderr, refused.stderr
