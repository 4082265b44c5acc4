"""An OpenAI-compatible `/chat/completions` endpoint, as the label judge and the lens judge both use one:
the request's shape, the key, and an unreachable endpoint named with the setting to fix."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass


@dataclass(frozen=True)
class Endpoint:
    url: str
    model: str
    prompt: str
    api_key: str = ""
    timeout_s: float = 60.0

    def ask(self, content: str | list[dict], fix: str) -> str:
        """The reply's text to one user message (a string, or OpenAI's list of text and image_url parts),
        at temperature 0; `fix` says what to change when the endpoint cannot be reached."""
        body = {"model": self.model, "temperature": 0, "messages": [{"role": "user", "content": content}]}
        key = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        request = urllib.request.Request(
            self.url.rstrip("/") + "/chat/completions",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"} | key,
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.load(response)["choices"][0]["message"]["content"].strip()
        except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
            raise ConnectionError(
                f"the LLM judge at {self.url} cannot be reached ({getattr(err, 'reason', err)}): {fix}"
            ) from None


def first_word(reply: str) -> str:
    """The reply's first word, upper-cased, without trailing punctuation: where a judge puts its verdict."""
    return reply.upper().split()[0].strip(".:,") if reply else ""
