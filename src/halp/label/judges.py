"""Judges decide whether an answer is hallucinated; each says why, so labels can be reviewed."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from difflib import SequenceMatcher
from typing import Protocol

from halp.data.schema import canonical_category
from halp.llm import Endpoint, OffFormat, first_word

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_NON_WORD = re.compile(r"[^\w\s]")
# Cues that an answer denies something ("no", "not", "isn't", "there is no ...").
_NEGATION = re.compile(
    r"\b(no|not|none|nothing|never|neither|nor|cannot|can't|isn't|aren't|doesn't|don't|didn't|"
    r"wasn't|weren't|without|absent|unable)\b|n't\b"
)
_AFFIRMATION = re.compile(r"^(yes|yeah|yep|correct|true|indeed|certainly|sure)\b")
# A statement that asserts what was asked ("There is a red circle."): an affirmation when nothing negates it.
_ASSERTION = re.compile(r"^(there (is|are)|there's|it (is|does)|it's|they (are|do)|they're|i (can )?see)\b")
_DENIAL = re.compile(r"^(no|nope|false|incorrect|not)\b")
# An answer that says the image does not settle the question (HaloQuest's insufficient context).
_UNDETERMINED = re.compile(
    r"\b(cannot|can't|can not|impossible to|unable to|not possible to|no way to|hard to)\b.*"
    r"\b(tell|determine|know|say|identify|answer)\b|"
    r"\b(unclear|unknown|uncertain|not clear|not sure|not enough information|insufficient)\b"
)


def normalise(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces."""
    text = _ARTICLES.sub(" ", _NON_WORD.sub(" ", text.lower().replace("’", "'")))
    return " ".join(text.split())


def polarity(answer: str) -> str | None:
    """ "yes", "no" or None (unanswered): a leading yes/no wins; otherwise a negation anywhere means no,
    and an assertion ("there is ...") yes. Anything else ("A dog.", gibberish) takes no position."""
    text = answer.lower().replace("’", "'").strip()
    if _AFFIRMATION.match(text):
        return "yes"
    if _DENIAL.match(text) or _NEGATION.search(text):
        return "no"
    return "yes" if _ASSERTION.match(text) else None


@dataclass(frozen=True)
class Verdict:
    hallucinated: bool
    reason: str


class Judge(Protocol):
    def __call__(self, question: str, answer: str, ground_truth: str, category: str) -> Verdict: ...


def names_object(text: str, name: str) -> bool:
    """Whether normalised `text` names the object `name` as whole words, singular or with a plural s/es."""
    name = normalise(name)
    return bool(name) and any(f" {form} " in f" {text} " for form in (name, f"{name}s", f"{name}es"))


def objects_named(answer: str, ground_truth: str) -> Verdict:
    """AMBER's generative items: hallucinated when the answer names an object of `hallu`, the objects
    the annotators listed as not in the image (the ground truth is AMBER's lists as JSON)."""
    try:
        absent = json.loads(ground_truth)["hallu"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(
            f"a generative item's ground truth must be AMBER's object lists as JSON "
            f'({{"truth": [...], "hallu": [...]}}); it is {ground_truth[:80]!r}'
        ) from err
    text = normalise(answer)
    named = [name for name in absent if names_object(text, name)]
    if named:
        return Verdict(True, f"names {', '.join(named)}, not in the image")
    return Verdict(False, f"names none of the {len(absent)} objects not in the image")


class RulesJudge:
    """Each benchmark's rule, by the row's category and ground truth: false premises by whether the answer
    rejects the premise; insufficient context (HaloQuest) by whether it says the image cannot tell, or
    gives an accepted answer; AMBER's generative items by the objects the answer names; yes/no truths
    (POPE, AMBER's discriminative items, existence questions) by the answer's polarity; other answers by a
    normalised match of any accepted answer (HaloQuest joins several with ";") inside it."""

    def __call__(self, question: str, answer: str, ground_truth: str, category: str) -> Verdict:
        truth, kind = normalise(ground_truth), canonical_category(category)
        if kind == "generative":
            return objects_named(answer, ground_truth)
        if kind == "false_premise" or ground_truth.lower().startswith("no;"):
            rejects = polarity(answer) == "no"
            return Verdict(
                not rejects, "rejects the false premise" if rejects else "accepts the false premise"
            )
        if kind == "insufficient_context" and _UNDETERMINED.search(answer.lower().replace("’", "'")):
            return Verdict(False, "says the image cannot tell")
        if truth in ("yes", "no"):
            said = polarity(answer)
            if said is None:
                return Verdict(True, "unanswered: neither yes nor no")
            return Verdict(said != truth, f"says {said}, truth is {truth}")
        accepted, words = [a for a in map(normalise, ground_truth.split(";")) if a], f" {normalise(answer)} "
        found = next((a for a in accepted if f" {a} " in words), None)
        if len(accepted) < 2:
            return Verdict(not found, "ground truth in answer" if found else "ground truth not in answer")
        if found:
            return Verdict(False, f"accepted answer {found!r} in answer")
        return Verdict(True, f"none of the {len(accepted)} accepted answers in answer")


@dataclass(frozen=True)
class RatioJudge:
    """HALP's release: hallucinated when difflib's similarity of answer and truth is below a threshold."""

    threshold: float = 0.5

    def __call__(self, question: str, answer: str, ground_truth: str, category: str) -> Verdict:
        ratio = SequenceMatcher(None, answer, ground_truth).ratio()
        return Verdict(ratio < self.threshold, f"similarity {ratio:.2f} vs threshold {self.threshold}")


class LLMJudge(Endpoint):
    """An OpenAI-compatible chat endpoint asked to reply HALLUCINATED or CORRECT."""

    def __call__(self, question: str, answer: str, ground_truth: str, category: str) -> Verdict:
        content = self.prompt.format(question=question, answer=answer, ground_truth=ground_truth)
        return self.ask(
            content, "start it, fix label.llm.url in params.yaml, or use label.judge: rules", self._verdict
        )

    @staticmethod
    def _verdict(reply: str) -> Verdict:
        if (word := first_word(reply)) not in ("HALLUCINATED", "CORRECT"):
            raise OffFormat(f"the LLM judge replied {reply[:80]!r}; expected HALLUCINATED or CORRECT first")
        return Verdict(word == "HALLUCINATED", f"llm: {reply[:200]}")
