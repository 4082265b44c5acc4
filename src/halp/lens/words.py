"""Lens readings as whole words: a tokenizer splits words into pieces ("re" + "d"), and a piece says little
on its own. A bank row is an occurrence in a corpus sentence, so its word is the one its characters sit
in; a vocabulary token (EmbeddingLens, LogitLens) is given the corpus word it is most often part of, or
its own text where the corpus never uses it."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np

from halp.store.reader import Bank

WORD = re.compile(r"\w+")


class Words:
    """The words of one model's bank rows and vocabulary, from its corpus as its tokenizer reads it."""

    def __init__(self, bank: Bank, sentences: list[str], tokenizer):
        spans = [self._word_spans(tokenizer, s) for s in sentences]
        self.bank = np.array(
            [
                spans[s][p] if p < len(spans[s]) else ""
                for s, p in zip(bank.meta.sentence, bank.meta.position, strict=True)
            ],
            dtype=object,
        )
        counts: dict[int, Counter] = {}
        for sentence in sentences:
            encoded = tokenizer(sentence)["input_ids"]
            for token, word in zip(encoded, self._word_spans(tokenizer, sentence), strict=True):
                if word:
                    counts.setdefault(token, Counter())[word] += 1
        self.vocabulary = {token: c.most_common(1)[0][0] for token, c in counts.items()}
        self.decode = tokenizer.decode

    @staticmethod
    def _word_spans(tokenizer, sentence: str) -> list[str]:
        """Per token of the sentence (as `tokenizer(sentence)` gives them), the lower-cased word its
        characters fall in; "" for a token outside every word (a special token, punctuation)."""
        offsets = tokenizer(sentence, return_offsets_mapping=True)["offset_mapping"]
        words = [(m.start(), m.end(), m.group().lower()) for m in WORD.finditer(sentence)]
        found = []
        for start, end in offsets:
            middle = (
                next((w for a, b, w in words if a <= start < b or a < end <= b), "") if end > start else ""
            )
            found.append(middle)
        return found

    def of_rows(self, rows: np.ndarray) -> np.ndarray:
        return self.bank[rows]

    def of_ids(self, ids: np.ndarray) -> np.ndarray:
        """A token id's corpus word, or its own text, lower-cased and stripped, where the corpus lacks it."""
        cache: dict[int, str] = {}
        for i in np.unique(ids):
            i = int(i)
            cache[i] = self.vocabulary.get(i) or self.decode([i]).strip().lower()
        return np.vectorize(cache.__getitem__, otypes=[object])(ids)

    def frequencies(self) -> dict[str, float]:
        """Each word's share of the bank's rows: what a word drawn by chance from the bank would be."""
        words, counts = np.unique(self.bank.astype(str), return_counts=True)
        return dict(zip(words.tolist(), (counts / counts.sum()).tolist(), strict=True))
