"""An OpenAI-compatible `/chat/completions` endpoint, as the label judge and the lens judge both use one:
the request's shape, the key, retries of what fails for a moment, every reply kept, and an endpoint that
stays unreachable named with the setting to fix.

A run of a thousand judgements must survive one 503: failures that pass (no connection, a timeout, HTTP
429 and 5xx) are tried again after each of `retry_seconds`. Every reply read is kept in a cache, keyed by
the whole request, so a run stopped at request 900 asks only the rest when run again (at temperature 0
the same request gets the same reply; delete the cache to ask again). A reply without a verdict in it is
the error of that one item (`OffFormat`), not of the run.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self, TypeVar

from halp.config import LLMJudgeSettings
from halp.digests import cache_dir

log = logging.getLogger(__name__)
T = TypeVar("T")
TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}


class OffFormat(ValueError):
    """A reply that holds no verdict: the error of the item asked about."""


def replies_path() -> Path:
    return cache_dir() / "judge-replies.jsonl"


_replies: dict[Path, dict[str, str]] = {}  # each cache file's replies, read once per process


def _known() -> dict[str, str]:
    path = replies_path()
    if path not in _replies:
        known = {}
        try:
            with path.open(encoding="utf-8") as lines:
                for line in lines:
                    if line.endswith("\n"):  # a line cut short by a kill holds no reply
                        record = json.loads(line)
                        known[record["key"]] = record["reply"]
        except (OSError, ValueError, KeyError):
            pass
        _replies[path] = known
    return _replies[path]


def _keep(key: str, reply: str) -> None:
    """Best effort, one whole line per append: a cache that cannot be written costs only requests."""
    _known()[key] = reply
    try:
        replies_path().parent.mkdir(parents=True, exist_ok=True)
        with replies_path().open("a", encoding="utf-8") as lines:
            lines.write(json.dumps({"key": key, "reply": reply}) + "\n")
    except OSError as err:
        log.debug("judge reply not cached (%s)", err)


@dataclass(frozen=True)
class Endpoint:
    url: str
    model: str
    prompt: str
    api_key: str = ""
    timeout_s: float = 60.0
    retry_seconds: Sequence[float] = (1.0, 4.0, 15.0)

    @classmethod
    def configured(cls, settings: LLMJudgeSettings) -> Self:
        """The endpoint a judge's settings describe, its key read from the environment variable named."""
        key = os.environ.get(settings.api_key_env, "")
        return cls(
            settings.url, settings.model, settings.prompt, key, retry_seconds=tuple(settings.retry_seconds)
        )

    def ask(self, content: str | list[dict], fix: str, read: Callable[[str], T]) -> T:
        """What `read` makes of the reply to one user message (a string, or OpenAI's list of text and
        image_url parts), at temperature 0. A reply `read` refuses (OffFormat) is not kept, so a rerun asks
        again; `fix` says what to change when the endpoint cannot be reached."""
        body = json.dumps(
            {"model": self.model, "temperature": 0, "messages": [{"role": "user", "content": content}]}
        )
        key = hashlib.sha256(f"{self.url.rstrip('/')}\n{body}".encode()).hexdigest()
        if (reply := _known().get(key)) is not None:
            return read(reply)
        reply = self._post_retrying(body.encode(), fix)
        value = read(reply)
        _keep(key, reply)
        return value

    def _post_retrying(self, data: bytes, fix: str) -> str:
        waits = iter(self.retry_seconds)
        while True:
            try:
                return self._post(data)
            except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError) as err:
                status = getattr(err, "code", None)
                reason = f"HTTP {status}: {_body(err)}" if status else getattr(err, "reason", err)
                refused = status is not None and status not in TRANSIENT_STATUS  # asking again won't help
                if (wait := next(waits, None)) is None or refused:
                    failed = "refused the request" if refused else "cannot be reached"
                    raise ConnectionError(f"the LLM judge at {self.url} {failed} ({reason}): {fix}") from None
                log.warning("the LLM judge at %s failed (%s); trying again in %g s", self.url, reason, wait)
                time.sleep(wait)

    def _post(self, data: bytes) -> str:
        key = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        request = urllib.request.Request(
            self.url.rstrip("/") + "/chat/completions",
            data=data,
            headers={"Content-Type": "application/json"} | key,
        )
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
            text = response.read().decode("utf-8", "replace")
        try:
            return json.loads(text)["choices"][0]["message"]["content"].strip()
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise OffFormat(f"the LLM judge replied {text[:120]!r}, not a chat completion") from None


def _body(err: BaseException) -> str:
    """An HTTP error's body, where the endpoint says why."""
    try:
        return err.read().decode("utf-8", "replace")[:120]
    except (AttributeError, OSError):
        return str(err)


def first_word(reply: str) -> str:
    """The reply's first word, upper-cased, without trailing punctuation: where a judge puts its verdict."""
    return reply.upper().split()[0].strip(".:,") if reply else ""
