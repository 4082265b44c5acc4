"""The lens's LLM judge against a local OpenAI-compatible server started here (no real judge is run)."""

from __future__ import annotations

import base64
import io
import socket

import pytest
from PIL import Image

from halp.lens.judge import LensJudge, patch
from tests.chat_server import chat_server


def says_yes_to_red(body: dict) -> str:
    text = body["messages"][0]["content"][0]["text"]
    return "YES: red is the patch's colour" if "red" in text else "NO, the words name nothing there"


def test_the_judge_is_sent_the_patch_and_the_words_and_its_reason_kept():
    seen = []
    image = Image.new("RGB", (84, 112), "white")
    image.paste((220, 40, 40), (28, 56, 56, 84))  # a red cell at row 2, column 1
    cell = patch(image, 2 * 3 + 1, grid_h=4, grid_w=3)
    assert cell.size == (28, 28) and cell.getpixel((14, 14)) == (220, 40, 40)
    with chat_server(says_yes_to_red, seen) as url:
        judge = LensJudge(url, "m", "Words: {words}. YES or NO?", api_key="k")
        assert judge(cell, ["red", "circle"]) == (True, "YES: red is the patch's colour")
        assert judge(cell, ["the", "only"]) == (False, "NO, the words name nothing there")
    path, body = seen[0]
    assert path == "/v1/chat/completions" and body["model"] == "m" and body["temperature"] == 0
    text, picture = body["messages"][0]["content"]
    assert text == {"type": "text", "text": "Words: red, circle. YES or NO?"}
    header, data = picture["image_url"]["url"].split(",", 1)
    assert header == "data:image/png;base64"
    sent = Image.open(io.BytesIO(base64.b64decode(data)))
    assert sent.size == (28, 28) and sent.convert("RGB").getpixel((3, 3)) == (220, 40, 40)


def test_a_reply_without_a_verdict_and_an_unreachable_judge_are_named():
    rambling = pytest.raises(ValueError, match=r"replied 'Well, it depends'; expected YES or NO first")
    with chat_server(lambda body: "Well, it depends") as url, rambling:
        LensJudge(url, "m", "{words}")(Image.new("RGB", (8, 8)), ["a"])
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    with pytest.raises(ConnectionError, match=r"cannot be reached .*lens.llm.url.*lens.judge: none"):
        LensJudge(f"http://127.0.0.1:{port}/v1", "m", "{words}", retry_seconds=(0.01,))(
            Image.new("RGB", (8, 8)), ["a"]
        )
