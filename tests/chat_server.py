"""A local OpenAI-compatible chat endpoint for the judges' tests: on 127.0.0.1, started and stopped by
the test, replying what `reply(body)` says and keeping every (path, body) it was sent. `reply` returns the
message's text, or (HTTP status, raw body) for a failing or broken endpoint."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, HTTPServer


@contextmanager
def chat_server(reply: Callable[[dict], str | tuple[int, str]], seen: list | None = None) -> Iterator[str]:
    """Yields the endpoint's base URL (".../v1")."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if seen is not None:
                seen.append((self.path, body))
            answer = reply(body)
            status, raw = answer if isinstance(answer, tuple) else (200, None)
            payload = (raw or json.dumps({"choices": [{"message": {"content": answer}}]})).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/v1"
    finally:
        server.shutdown()
