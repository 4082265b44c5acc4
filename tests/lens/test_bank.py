"""The contextual bank: who enters it, and that each row is the model's own state for that token."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from halp.config import load_params
from halp.data.corpus import write_demo_corpus
from halp.digests import file_digest
from halp.lens.bank import build_bank, choose_occurrences
from halp.models.loading import load_model
from halp.store import open_bank
from tests.conftest import set_params

MODEL = "qwen2_vl"


def test_the_cap_is_per_token_string_and_specials_are_skipped_by_id():
    token_ids = [[7, 1, 2, 1], [1, 3, 9, 1]]  # 9 is special; 1 appears four times, "a" is 1 and 2
    strings = {1: "a", 2: "a", 3: "c", 7: "d", 9: "<s>"}
    chosen = choose_occurrences(token_ids, strings, {9}, cap=2, seed=0)
    assert (chosen.token_id != 9).all() and (chosen.token_string.value_counts() <= 2).all()
    assert set(chosen.token_string) == {"a", "c", "d"}
    twice = choose_occurrences([[7, 1], [7, 1], [7, 2]], strings, set(), cap=10, seed=0)
    assert len(twice) == 3, "a repeated context (7, 1) gives one row: same tokens before, same vector"
    assert (0, 0) in set(zip(chosen.sentence, chosen.position, strict=True)), "position 0 is eligible"
    again = choose_occurrences(token_ids, strings, {9}, cap=2, seed=0)
    assert chosen.equals(again)
    picks = {tuple(choose_occurrences(token_ids, strings, {9}, 2, seed).position) for seed in range(10)}
    assert len(picks) > 1, "the seed chooses which occurrences"


@pytest.fixture()
def bank_workspace(workspace):
    corpus = write_demo_corpus(workspace / "corpus.txt", n_sentences=24, seed=0)
    set_params(workspace, {"lens": {"corpus": str(corpus), "max_per_token": 1000, "bank_layers": [0, -1]}})
    return workspace


def build(workspace, **changes):
    set_params(workspace, changes)
    return open_bank(build_bank(load_params(workspace / "params.yaml"), MODEL))


@torch.inference_mode()
def test_rows_are_the_models_own_states_whatever_the_batch(bank_workspace, monkeypatch):
    monkeypatch.chdir(bank_workspace)
    alone = build(bank_workspace, **{f"models.{MODEL}.batch_size": 1, "lens.bank_dir": "alone"})
    batched = build(bank_workspace, **{f"models.{MODEL}.batch_size": 5, "lens.bank_dir": "batched"})
    assert alone.attrs["corpus_sha256"] == file_digest(str(bank_workspace / "corpus.txt"))
    assert alone.layers == [0, 3] and alone.meta.equals(batched.meta)
    for layer in alone.layers:
        np.testing.assert_allclose(alone.vectors(layer), batched.vectors(layer), atol=2e-3)
        np.testing.assert_allclose(alone.norms(layer), batched.norms(layer), rtol=1e-4)
    loaded = load_model(load_params(bank_workspace / "params.yaml").model(MODEL))
    tokenizer = loaded.processor.tokenizer
    sentences = (bank_workspace / "corpus.txt").read_text().splitlines()
    meta = alone.meta
    first_words = {tokenizer(s)["input_ids"][0] for s in sentences}
    assert set(meta[meta.position == 0].token_id) == first_words, "first tokens are kept (once each)"
    for i in (0, 7):
        ids = tokenizer(sentences[i], return_tensors="pt")
        hidden = loaded.model(**ids, output_hidden_states=True).hidden_states
        rows = meta.index[meta.sentence == i]
        assert set(meta.position[rows]) <= set(range(ids["input_ids"].shape[1])), "no padding rows"
        for row in rows:
            state = hidden[1][0, meta.position[row]]  # block 0's output
            np.testing.assert_allclose(alone.norms(0)[row], state.norm().item(), rtol=1e-4)
            np.testing.assert_allclose(alone.vectors(0)[row], (state / state.norm()).numpy(), atol=2e-3)


def test_the_cap_holds_and_a_lost_part_comes_back_the_same(bank_workspace, monkeypatch):
    monkeypatch.chdir(bank_workspace)
    bank = build(bank_workspace, **{"lens.max_per_token": 3, "lens.bank_part_rows": 16})
    assert bank.meta.token_string.value_counts().max() == 3
    assert len(bank.parts) > 1
    before = bank.vectors(3)
    bank.parts[0].unlink()
    again = build(bank_workspace)
    assert again.meta.equals(bank.meta)
    np.testing.assert_array_equal(again.vectors(3), before)


def test_a_very_long_sentence_is_cut_to_max_tokens_with_a_log_line_and_changes_the_bank(
    bank_workspace, monkeypatch, caplog
):
    monkeypatch.chdir(bank_workspace)
    corpus = bank_workspace / "corpus.txt"
    plain = build(bank_workspace, **{"lens.bank_dir": "plain", "lens.max_tokens": 64})
    assert "cut to" not in caplog.text, "the demo sentences are short"
    corpus.write_text(corpus.read_text() + "the red circle " * 20_000 + "\n")  # ~100k characters
    long = build(bank_workspace, **{"lens.bank_dir": "long", "lens.max_tokens": 64})
    assert (
        "sentence 24 (blank lines not counted)" in caplog.text
        and "cut to lens.max_tokens = 64" in caplog.text
    )
    assert long.meta[long.meta.sentence == 24].position.max() < 64
    assert long.attrs["config_hash"] != plain.attrs["config_hash"]


def test_the_same_bank_twice_writes_the_same_bytes(bank_workspace, monkeypatch):
    """A fresh clone's `dvc repro` must rebuild the bank dvc.lock records: no time or host in a part."""
    monkeypatch.chdir(bank_workspace)
    folders = []
    for out in ("first", "second"):
        folders.append(build(bank_workspace, **{"lens.bank_dir": out}).folder)
        time.sleep(1.1)  # a clock's seconds, had a part kept one, would differ between the two
    names = sorted(p.name for p in folders[0].iterdir())
    assert len(names) > 1 and names == sorted(p.name for p in folders[1].iterdir())
    for name in names:
        assert (folders[0] / name).read_bytes() == (folders[1] / name).read_bytes(), name
