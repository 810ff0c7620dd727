"""A browser's EventSource, played on the simulated Pi through its own nginx (stdlib only; the Pi's python3).

molecule/default/tests/test_replies.py copies this file onto the Pi and runs it with one JSON argument:

    {"method": "POST", "path": "/api/chat/message", "body": {...}, "token": "...",
     "action_at": 15, "action": "docker restart backend",   # a shell command, run once event 15 has arrived
     "follower_at": 5,                                       # a second client GETs the reply's URL from id 1
     "max_s": 120}

Like EventSource, when a response ends before `done` or `expired` it reconnects to the reply's URL (the first
response's Content-Location) with `Last-Event-ID: <the last id it received>`, and retries while nginx answers
502/503/504 or the connection is refused. It prints one JSON object: every response of each client with its
status and events, and the action's exit code and output.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import subprocess
import sys
import threading
import time
from typing import Any

Params = dict[str, Any]
RETRY_STATUSES = {502, 503, 504}
FINAL_TYPES = {"done", "expired"}


def tls_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the Pi's own self-signed certificate
    return context


class Client:
    """One EventSource: its responses, in order, and what each carried."""

    def __init__(self, params: Params, on_event: Any = None) -> None:
        self.params = params
        self.on_event = on_event
        self.responses: list[Params] = []
        self.location = ""
        self.deadline = time.monotonic() + float(params.get("max_s", 120))

    def headers(self, last_event_id: str | None) -> dict[str, str]:
        headers = {"Accept": "text/event-stream"}
        if self.params.get("token"):
            headers["Authorization"] = f"Bearer {self.params['token']}"
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        return headers

    def last_id(self) -> str | None:
        ids = [e["id"] for r in self.responses for e in r["events"] if e["id"] is not None]
        return ids[-1] if ids else None

    def finished(self) -> bool:
        return any(e["data"].get("type") in FINAL_TYPES for r in self.responses for e in r["events"])

    def run(self, method: str, path: str, body: Params | None, last_event_id: str | None = None) -> None:
        """The first request, then reconnections to the reply's URL until done, expired or the deadline."""
        request: tuple[str, str, Params | None, str | None] = (method, path, body, last_event_id)
        while time.monotonic() < self.deadline:
            response = self.one_response(*request)
            self.responses.append(response)
            if self.finished() or (response["status"] not in (200, *RETRY_STATUSES, 0)):
                return
            if response["status"] != 200 or not response["events"]:
                time.sleep(0.5)
            if not self.location:
                return
            request = ("GET", self.location, None, self.last_id() if self.last_id() is not None else last_event_id)

    def one_response(self, method: str, path: str, body: Params | None, last_event_id: str | None) -> Params:
        response: Params = {"method": method, "path": path, "last_event_id": last_event_id, "status": 0,
                            "events": [], "end": ""}
        connection = http.client.HTTPSConnection("127.0.0.1", 443, context=tls_context(), timeout=40)
        try:
            headers = self.headers(last_event_id)
            payload = None
            if body is not None:
                payload = json.dumps(body).encode()
                headers["Content-Type"] = "application/json"
            connection.request(method, path, body=payload, headers=headers)
            answer = connection.getresponse()
            response["status"] = answer.status
            response["content_location"] = answer.getheader("Content-Location") or ""
            if answer.status != 200:
                response["body"] = answer.read(4096).decode(errors="replace")
                response["end"] = "status"
                return response
            self.location = self.location or response["content_location"]
            response["end"] = self.read_events(answer, response["events"])
        except (OSError, http.client.HTTPException) as exc:
            response["end"] = f"{type(exc).__name__}: {exc}"
        finally:
            connection.close()
        return response

    def read_events(self, answer: http.client.HTTPResponse, events: list[Params]) -> str:
        """Parse the SSE body as it arrives; the way it ended."""
        event_id: str | None = None
        data: list[str] = []
        while True:
            raw = answer.readline()
            if not raw:
                return "eof"
            line = raw.decode().rstrip("\r\n")
            if line.startswith("id:"):
                event_id = line[3:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip(" "))
            elif line == "" and data:
                event = {"id": event_id, "data": json.loads("\n".join(data)), "at": time.monotonic()}
                events.append(event)
                event_id, data = None, []
                if self.on_event is not None:
                    self.on_event(event)
                if event["data"].get("type") in FINAL_TYPES:
                    return str(event["data"]["type"])


def main() -> int:
    params: Params = json.loads(sys.argv[1])
    result: Params = {"action": None}
    threads: list[threading.Thread] = []
    follower = Client({**params})

    def on_event(event: Params) -> None:
        if event["id"] is not None and event["id"] == str(params.get("action_at")) and result["action"] is None:
            result["action"] = {"started_after_id": event["id"]}

            def act() -> None:
                run = subprocess.run(["sh", "-c", params["action"]], capture_output=True, text=True, timeout=120, check=False)
                result["action"] |= {"rc": run.returncode, "output": (run.stdout + run.stderr)[-2000:]}

            threads.append(threading.Thread(target=act))
            threads[-1].start()
        if event["id"] is not None and event["id"] == str(params.get("follower_at")) and not follower.responses:
            follower.location = first.location
            threads.append(threading.Thread(target=follower.run, args=("GET", first.location, None)))
            threads[-1].start()

    first = Client(params, on_event)
    first.run(params.get("method", "GET"), params["path"], params.get("body"))
    for thread in threads:
        thread.join(timeout=max(1.0, first.deadline - time.monotonic()))
    result |= {"location": first.location, "responses": first.responses, "follower": follower.responses}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    socket.setdefaulttimeout(40)
    sys.exit(main())
