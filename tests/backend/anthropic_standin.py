"""A local stand-in for the Anthropic Messages API (streaming), stdlib only.

It speaks the SSE wire format of ``POST /v1/messages`` with ``stream: true``
(message_start, content_block_start, content_block_delta/text_delta,
content_block_stop, message_delta, message_stop) and misbehaves on request:
the last user message picks the scenario.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

VALID_KEY = "sk-ant-test-valid"
GOOD_TOKENS = ("Hello", " from", " the", " stand-in", " مرحبا", " 🚀")
SCENARIO_BAD_KEY = "please reject my key"  # as if the key were revoked
SCENARIO_OVERLOADED = "please be overloaded"
SCENARIO_SLOW = "please stall"
SCENARIO_MIDSTREAM_ERROR = "please fail midway"


def _error_body(kind: str, message: str) -> bytes:
    return json.dumps({"type": "error", "error": {"type": kind, "message": message}}).encode()


class StandIn(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[dict[str, Any]] = []
        self.stop = threading.Event()  # ends stalls early at teardown
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self) -> StandIn:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: StandIn

    def log_message(self, format: str, *args: object) -> None:
        pass  # quiet

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append(
            {
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body": body,
            }
        )
        if self.path != "/v1/messages":
            self._json_error(404, "not_found_error", f"no route {self.path}")
        elif self._api_key() != VALID_KEY or body["messages"][-1]["content"] == SCENARIO_BAD_KEY:
            self._json_error(401, "authentication_error", "invalid x-api-key")
        else:
            scenario = body["messages"][-1]["content"]
            if scenario == SCENARIO_OVERLOADED:
                self._json_error(529, "overloaded_error", "Overloaded")
            else:
                self._stream(body["model"], scenario)

    def _api_key(self) -> str | None:
        """The key, from x-api-key or (as SDK 2.x sends it) a bearer token."""
        bearer = self.headers.get("Authorization", "")
        return self.headers.get("x-api-key") or bearer.removeprefix("Bearer ") or None

    def _json_error(self, status: int, kind: str, message: str) -> None:
        data = _error_body(kind, message)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _event(self, name: str, payload: dict[str, Any]) -> None:
        self.wfile.write(f"event: {name}\ndata: {json.dumps(payload)}\n\n".encode())
        self.wfile.flush()

    def _stream(self, model: str, scenario: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        message: dict[str, Any] = {
            "id": "msg_standin",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 5, "output_tokens": 1},
        }
        self._event("message_start", {"type": "message_start", "message": message})
        if scenario == SCENARIO_SLOW:
            self.server.stop.wait(5)  # far longer than the backend's provider timeout
            return
        self._event(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        )
        self._event("ping", {"type": "ping"})
        for index, text in enumerate(GOOD_TOKENS):
            if scenario == SCENARIO_MIDSTREAM_ERROR and index == 2:
                self.wfile.write(
                    b"event: error\ndata: "
                    + _error_body("overloaded_error", "Overloaded")
                    + b"\n\n"
                )
                self.wfile.flush()
                return
            delta = {"type": "text_delta", "text": text}
            self._event(
                "content_block_delta",
                {"type": "content_block_delta", "index": 0, "delta": delta},
            )
            time.sleep(0.02)
        self._event("content_block_stop", {"type": "content_block_stop", "index": 0})
        self._event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": len(GOOD_TOKENS)},
            },
        )
        self._event("message_stop", {"type": "message_stop"})
