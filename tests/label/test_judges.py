"""Judges on real-looking answers, and the label stage's overrides and metrics."""

from __future__ import annotations

import socket

import pandas as pd
import pytest

from halp.data.schema import canonical_category, repair_ground_truth
from halp.label.judges import LLMJudge, RatioJudge, RulesJudge, polarity
from halp.label.run import label_answers, rates, read_overrides
from tests.chat_server import chat_server

CASES = [
    # (question, answer, ground truth, category, hallucinated)
    ("Is there a red circle?", "Yes, there is a red circle in the top left.", "yes", "existence", False),
    ("Is there a red circle?", "No, I don't see any red circle.", "yes", "existence", True),
    ("Is there a purple square?", "There is no purple square in the image.", "no", "existence", False),
    ("Is there a purple square?", "There's a purple square next to the circle.", "no", "existence", True),
    ("Is the dog on the sofa?", "The dog isn't on the sofa; it lies on the floor.", "no", "spatial", False),
    ("Is the cup left of the plate?", "It is not possible to tell.", "yes", "spatial", True),
    ("Is there direct contact?", "Yes, they touch.", "n, o", "relation", True),
    ("Is there a cat?", "A dog.", "yes", "existence", True),  # unanswered, not a yes
    ("Is there a cat?", "ass ass ass", "no", "existence", True),
    ("Is there direct contact?", "No.", "n, o", "relation", False),
    ("What color is the car?", "The car is red.", "red", "attribute", False),
    ("What color is the car?", "It looks dark red-ish, like a redwood.", "blue", "attribute", True),
    (
        "Is the forest lit by a full moon making the mushrooms glow?",
        "The image does not show a full moon, so it cannot be determined.",
        "No; The forest isn't brightened by full moonlight",
        "false_premise",
        False,
    ),
    (
        "Why is the purple triangle touching the green circle?",
        "The purple triangle touches the green circle because they are close together.",
        "No; there is no purple triangle in the image",
        "false_premise",
        True,
    ),
    (  # HALP's category name, and a ground truth that is not a plain "No; ..."
        "Is the forest lit by a full moon?",
        "No, there is no full moon in the picture.",
        "The forest is not lit by moonlight",
        "false premises",
        False,
    ),
]


@pytest.mark.parametrize(("question", "answer", "truth", "category", "hallucinated"), CASES)
def test_rules_judge(question, answer, truth, category, hallucinated):
    truth, _ = repair_ground_truth(truth)
    verdict = RulesJudge()(question, answer, truth, category)
    assert verdict.hallucinated == hallucinated, verdict.reason
    assert verdict.reason


def test_category_names_are_mapped_in_one_place():
    assert canonical_category("False premises") == canonical_category("false-premise") == "false_premise"
    assert canonical_category("Existence") == "existence"


@pytest.mark.parametrize(
    ("answer", "said"),
    [
        ("Yes.", "yes"),
        ("No", "no"),
        ("Nope, none.", "no"),
        ("I can't see one", "no"),
        ("It is there", "yes"),
        ("There are two of them.", "yes"),
        ("A dog.", None),  # an answer to another question: no position, not a yes
        ("WV$ assV$ ass", None),
        ("", None),
    ],
)
def test_polarity(answer, said):
    assert polarity(answer) == said


def test_an_answer_without_yes_or_no_is_unanswered_and_hallucinated():
    verdict = RulesJudge()("Is there a cat?", "A dog.", "no", "existence")
    assert verdict.hallucinated and verdict.reason.startswith("unanswered")


def test_ratio_judge_reproduces_halp():
    judge = RatioJudge(0.5)
    assert not judge("q", "a red car", "a red car.", "c").hallucinated
    assert judge("q", "The image shows a forest at night.", "No", "c").hallucinated


def test_overrides_apply_last_and_are_validated(tmp_path):
    meta = pd.DataFrame(
        {
            "sample_id": ["q1", "q2"],
            "image_id": ["a", "b"],
            "question": ["Is it red?", "Is it red?"],
            "answer": ["Yes", "Yes"],
            "ground_truth": ["yes", "no"],
            "category": ["attribute", "attribute"],
        }
    )
    path = tmp_path / "overrides.csv"
    path.write_text("question_id,label\nq1,1\nq9,0\n")
    labels = label_answers(meta, RulesJudge(), "rules", read_overrides(path))
    assert labels.hallucinated.tolist() == [True, True]
    assert labels.judge.tolist() == ["manual", "rules"]
    assert rates(labels)["hallucination_rate"] == 1.0
    path.write_text("question_id,label\nq1,maybe\n")
    with pytest.raises(ValueError, match=r"line 2 \('maybe'\)"):
        read_overrides(path)
    path.write_text("id,label\nq1,1\n")
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['question_id'\]"):
        read_overrides(path)
    path.write_text("question_id,label\nq1,1\nq2,0\nq1,0\n")
    with pytest.raises(ValueError, match=r"1 question_id\(s\) appear more than once: line 2 \(q1\), line 4"):
        read_overrides(path)


def test_llm_judge_talks_to_an_openai_compatible_endpoint():
    seen = []

    def reply(body: dict) -> str:
        return "HALLUCINATED: no such object" if "triangle" in body["messages"][0]["content"] else "CORRECT"

    with chat_server(reply, seen) as url:
        judge = LLMJudge(url, "m", "{question}|{answer}|{ground_truth}")
        assert judge("Why the triangle?", "Because.", "No; none", "false_premise").hallucinated
        assert not judge("Is it red?", "Yes", "yes", "attribute").hallucinated
    assert seen[0][0] == "/v1/chat/completions"
    assert seen[0][1]["model"] == "m" and seen[0][1]["temperature"] == 0


def test_an_unreachable_llm_judge_names_the_setting_to_fix():
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    judge = LLMJudge(f"http://127.0.0.1:{port}/v1", "m", "{question}", retry_seconds=(0.01,))
    with pytest.raises(ConnectionError, match=r"cannot be reached .*label.llm.url.*label.judge: rules"):
        judge("Is it red?", "Yes", "yes", "attribute")


def answers(n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "sample_id": [f"q{i}" for i in range(n)],
            "image_id": [f"img{i}" for i in range(n)],
            "question": [f"Is shape {i} red?" for i in range(n)],
            "answer": ["Yes"] * n,
            "ground_truth": ["yes"] * n,
            "category": ["attribute"] * n,
        }
    )


def test_a_503_is_tried_again_and_a_reply_without_a_verdict_is_that_answer_s_error_asked_again_alone():
    seen, meta = [], answers(6)

    def flaky(body: dict):
        if len(seen) == 2:
            return 503, "overloaded"  # the third request, once
        if "shape 4" in body["messages"][0]["content"] and len(seen) <= 7:
            return "I cannot tell from here."
        if "shape 5" in body["messages"][0]["content"] and len(seen) <= 7:
            return 200, '{"error": {"message": "model overloaded"}}'  # a 200 that is no completion
        return "CORRECT"

    with chat_server(flaky, seen) as url:
        judge = LLMJudge(url, "m", "{question}", retry_seconds=(0.01,))
        with pytest.raises(ValueError, match=r"2 of 6 answers got a reply with no verdict") as err:
            label_answers(meta, judge, "llm", None)
        assert "q4: the LLM judge replied 'I cannot tell from here.'" in str(err.value)
        assert 'q5: the LLM judge replied \'{"error"' in str(err.value) and "label.overrides" in str(
            err.value
        )
        assert len(seen) == 7, "six answers and the 503 tried again"
        labels = label_answers(meta, judge, "llm", None)  # the rerun asks about the two answers only
        assert len(seen) == 9 and not labels.hallucinated.any() and (labels.judge == "llm").all()
        overridden = label_answers(answers(7), judge, "llm", pd.Series({"q6": True}))
        assert len(seen) == 9, "an overridden answer is not asked about"
        assert (
            overridden.hallucinated.tolist() == [False] * 6 + [True] and overridden.judge.iloc[6] == "manual"
        )


def test_an_endpoint_gone_after_request_4_stops_and_the_rerun_asks_only_the_rest():
    seen, down = [], [False]

    def reply(body: dict):
        down[0] = down[0] or len(seen) == 5
        return (503, "gone") if down[0] else "HALLUCINATED"

    with chat_server(reply, seen) as url:
        judge = LLMJudge(url, "m", "{question}", retry_seconds=(0.01, 0.01))
        with pytest.raises(ConnectionError, match=r"cannot be reached \(HTTP 503: gone\)"):
            label_answers(answers(6), judge, "llm", None)
        assert len(seen) == 4 + 3, "four judged, the fifth tried three times"
        down[0] = False  # back up: the four replies kept are not asked for again
        labels = label_answers(answers(6), judge, "llm", None)
        assert len(seen) == 7 + 2 and labels.hallucinated.all()


def test_a_refused_request_is_not_tried_again():
    seen = []
    with chat_server(lambda body: (401, "bad key"), seen) as url:
        judge = LLMJudge(url, "m", "{question}", retry_seconds=(0.01, 0.01))
        with pytest.raises(ConnectionError, match=r"refused the request \(HTTP 401: bad key\)"):
            judge("Is it red?", "Yes", "yes", "attribute")
    assert len(seen) == 1
