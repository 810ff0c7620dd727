#!/bin/bash
# The client contract of issue 14, checked on each design with curl from inside the spike's container;
# prints one JSON object: design -> check -> value. Heartbeats: a reply with a 17 s pause between its tokens.
set -euo pipefail
python3 - <<'PY'
import json, re, subprocess, concurrent.futures as cf

PORTS = {"single": 8401, "a_sse": 8402, "a_hub": 8404, "b_nchan": 8403}


def curl(url, max_s, headers=()):
    argv = ["curl", "-sS", "-i", "-N", "--max-time", str(max_s), "-H", "Accept: text/event-stream"]
    for h in headers:
        argv += ["-H", h]
    return subprocess.run(argv + [url], capture_output=True, text=True).stdout


def ids(text):
    return re.findall(r"^id: ?(.*)$", text, re.M)


def location(text):
    found = re.search(r"^content-location: ?(\S+)", text, re.M | re.I)
    return found.group(1) if found else None


def check(design, port):
    base = f"http://127.0.0.1:{port}"
    first = curl(f"{base}/api/probe/stream?tokens=5&interval_ms=50", 2)
    out = {"start: Content-Location": location(first) or "missing",
           "start: ids": " ".join(ids(first)[:3]) + " ...",
           "retry:": "yes" if re.search(r"^retry: ?\d+", first, re.M) else "no",
           "event: lines": "yes" if re.search(r"^event:", first, re.M) else "no"}
    loc, got = location(first), ids(first)
    if loc and len(got) >= 3:
        resumed = curl(base + loc, 2, [f"Last-Event-ID: {got[2]}"])
        out["resume after id 3: ids"] = " ".join(ids(resumed)) or "none"
        out["resume: Content-Location"] = location(resumed) or "missing"
        out["replay without Last-Event-ID: events"] = len(ids(curl(base + loc, 2)))
    expired = curl(f"{base}/api/replies/0123456789abcdef", 2)
    out["unknown/expired reply"] = "expired event" if '"expired"' in expired else (expired.splitlines() or ["nothing"])[0]
    slow = curl(f"{base}/api/probe/stream?tokens=2&interval_ms=17000", 18.5)
    out["heartbeats in a 17 s pause"] = len(re.findall(r"^: ?keepalive", slow, re.M))
    return design, out


with cf.ThreadPoolExecutor(4) as pool:
    print(json.dumps(dict(pool.map(lambda kv: check(*kv), PORTS.items()))))
PY
