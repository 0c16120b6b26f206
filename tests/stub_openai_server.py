"""A TEST DOUBLE of an OpenAI-compatible server (vLLM/SGLang), serving on 127.0.0.1 only.

It streams scripted chat completions and records each request body, so tests can check what
the remote backend sends (sampling, `chat_template_kwargs`) and how it shows what comes back.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class StubOpenAIServer:
    """Each request pops the next scripted reply: (reasoning text, content text). `delay_s`
    between chunks makes a slow model (a reply a user can stop half-way). `GET /v1/models`
    lists `models`."""

    def __init__(
        self,
        replies: list[tuple[str, str]],
        reasoning_field: str = "reasoning_content",
        delay_s: float = 0.0,
        models: tuple[str, ...] = ("Qwen/Qwen3-0.6B-GPTQ-Int8",),
    ):
        self.replies = list(replies)
        self.models = models
        self.delay_s = delay_s
        self.requests: list[dict[str, Any]] = []
        self.reasoning_field = reasoning_field
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> StubOpenAIServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _chunks(self, reasoning: str, content: str) -> list[dict[str, Any]]:
        deltas = [{self.reasoning_field: reasoning[i : i + 4]} for i in range(0, len(reasoning), 4)]
        deltas += [{"content": content[i : i + 4]} for i in range(0, len(content), 4)]
        return [
            {
                "id": "stub",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": "stub",
                "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
            }
            for delta in deltas
        ]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.path.rstrip("/") != "/v1/models":
                    self.send_error(404)
                    return
                models = [
                    {"id": name, "object": "model", "owned_by": "stub"} for name in stub.models
                ]
                body = json.dumps({"object": "list", "data": models}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append(body)
                reasoning, content = stub.replies.pop(0) if stub.replies else ("", "(no more)")
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                try:
                    for chunk in stub._chunks(reasoning, content):
                        self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                        self.wfile.flush()
                        time.sleep(stub.delay_s)
                    self.wfile.write(b"data: [DONE]\n\n")
                except (BrokenPipeError, ConnectionResetError):  # the client stopped reading
                    pass

        return Handler
