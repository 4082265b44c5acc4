"""Readings as whole words, with the demo VLM's own tokenizer (it splits words into pieces)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
from transformers import AutoTokenizer

from halp.lens.words import Words
from tests.conftest import REPO

SENTENCES = ["No yellow circle.", "A purple triangle is next to the orange square.", "No square."]


def every_position(tokenizer) -> SimpleNamespace:
    """A bank's rows as `Words` reads them: (sentence, position) of every token of the corpus."""
    rows = [(s, p) for s, text in enumerate(SENTENCES) for p in range(len(tokenizer(text)["input_ids"]))]
    return SimpleNamespace(meta=pd.DataFrame(rows, columns=["sentence", "position"]))


def test_every_piece_of_a_bank_row_reads_as_its_whole_word():
    tokenizer = AutoTokenizer.from_pretrained(REPO / "models/organisms/demo_vlm")
    words = Words(every_position(tokenizer), SENTENCES, tokenizer)
    first = len(tokenizer(SENTENCES[0])["input_ids"])
    assert [tokenizer.decode([i]) for i in tokenizer(SENTENCES[0])["input_ids"][:2]] == ["N", "o"], (
        "the test needs a word split into pieces"
    )
    assert list(words.of_rows(np.arange(first))) == ["no", "no", "yellow", "circle", ""]
    assert words.of_rows(np.array([first + 1]))[0] == "purple"


def test_a_vocabulary_piece_reads_as_the_corpus_word_it_is_most_often_part_of():
    tokenizer = AutoTokenizer.from_pretrained(REPO / "models/organisms/demo_vlm")
    words = Words(every_position(tokenizer), SENTENCES, tokenizer)
    piece = tokenizer(SENTENCES[0])["input_ids"][1]  # "o" of "No"
    unused = tokenizer(" zebra")["input_ids"][-1]
    found = words.of_ids(np.array([[piece, unused]]))
    assert found[0, 0] == "no" and found[0, 1] == tokenizer.decode([unused]).strip().lower()
    frequencies = words.frequencies()
    assert abs(sum(frequencies.values()) - 1) < 1e-12 and frequencies["no"] > frequencies["yellow"]
