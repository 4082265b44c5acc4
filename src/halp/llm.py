"""One request to an OpenAI-compatible `/chat/completions` endpoint: what the label judge and the lens
judge share (the request's shape, the key, and an unreachable endpoint named with the setting to fix)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request


def chat(url: str, model: str, content: str | list[dict], api_key: str, timeout_s: float, fix: str) -> str:
    """The reply's text to one user message (a string, or OpenAI's list of text and image_url parts),
    at temperature 0. `fix` says what to change when the endpoint cannot be reached."""
    body = {"model": model, "temperature": 0, "messages": [{"role": "user", "content": content}]}
    request = urllib.request.Request(
        url.rstrip("/") + "/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"}
        | ({"Authorization": f"Bearer {api_key}"} if api_key else {}),
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return json.load(response)["choices"][0]["message"]["content"].strip()
    except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
        raise ConnectionError(
            f"the LLM judge at {url} cannot be reached ({getattr(err, 'reason', err)}): {fix}"
        ) from None


def first_word(reply: str) -> str:
    """The reply's first word, upper-cased, without trailing punctuation: where a judge puts its verdict."""
    return reply.upper().split()[0].strip(".:,") if reply else ""
