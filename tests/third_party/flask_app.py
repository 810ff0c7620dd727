"""A Flask app under gunicorn: a generator response stamped with ``time.time_ns() // 1000`` (microseconds).

Each event's ``id`` is ``"<n>-<wall clock ns when written>"`` (the tests' ground truth, not read by the check).
Query: n (20), interval_ms (50). Run: ``gunicorn -k gthread --threads 8 tests.third_party.flask_app:app``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

from flask import Flask, Response, request

app = Flask(__name__)


@app.get("/micro")
def micro() -> Response:
    n = int(request.args.get("n", 20))
    interval = int(request.args.get("interval_ms", 50)) / 1000

    def events() -> Iterator[str]:
        for i in range(n):
            payload = {"type": "token", "content": f"tok{i} ", "ts": time.time_ns() // 1000}
            yield f"id: {i}-{time.time_ns()}\nevent: token\ndata: {json.dumps(payload)}\n\n"
            time.sleep(interval)
        yield "event: done\ndata: {}\n\n"

    return Response(events(), mimetype="text/event-stream", headers={"Cache-Control": "no-cache"})
