"""Container HEALTHCHECK: ``python -m app.healthcheck`` (stdlib only, no curl)."""

from __future__ import annotations

import http.client
import os
import sys


def main() -> int:
    port = int(os.environ.get("BACKEND_PORT", "7776"))
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3)
    try:
        conn.request("GET", "/api/health")
        status = conn.getresponse().status
    except OSError as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    finally:
        conn.close()
    return 0 if status == 200 else 1


if __name__ == "__main__":
    sys.exit(main())
