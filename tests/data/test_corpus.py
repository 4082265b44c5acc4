"""The lens's corpus: a file a person points lens.corpus at."""

from __future__ import annotations

import pytest

from halp.data.corpus import read_corpus


def test_a_binary_corpus_is_refused_naming_the_file_and_line(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(b"a red circle\nthe blue \xff\xfe square\n")
    with pytest.raises(ValueError, match=r"corpus .*corpus.txt is not UTF-8 text \(line 2, byte 22"):
        read_corpus(corpus)
    corpus.write_text("a red circle\n\nthe blue square\n")
    assert read_corpus(corpus) == ["a red circle", "the blue square"]
