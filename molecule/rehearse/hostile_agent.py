"""Hostile and legitimate clients, run on the simulated Pi itself (stdlib only; the Pi's python3).

molecule/rehearse/tests/test_sim_hostile.py copies this file onto the Pi and runs it twice at once:
``attack`` plays one of issue 13's hostile clients from attacker addresses (127.0.0.x, or many
IPv6 addresses of one /64), ``watch`` plays the legitimate client from 127.0.0.1 (its /api/health,
every 0.2 s) and samples the backend container's memory and the connections its port holds.
Each prints one JSON object. Separate processes, so the attacker's event loop never delays the
legitimate client's measurements.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import socket
import ssl
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

Params = dict[str, Any]


def tls_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the Pi's own self-signed certificate
    return context


class Target:
    """Where the attack goes: host, port, TLS or not."""

    def __init__(self, spec: Params) -> None:
        self.host = str(spec["host"])
        self.port = int(spec["port"])
        self.tls = bool(spec.get("tls", False))

    async def connect(self, source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.wait_for(
            asyncio.open_connection(
                self.host, self.port, ssl=tls_context() if self.tls else None,
                server_hostname="pi5.local" if self.tls else None, local_addr=(source, 0)),
            timeout=10)


def request_head(method: str, path: str, headers: Params) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: pi5.local", "Connection: close", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def read_response(reader: asyncio.StreamReader, *, body: bool = True) -> tuple[int, bytes]:
    """(status, body); the body read whole (by its Content-Length, else until the server closes)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if not body:
        return status, b""
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), None)
    data = await (reader.readexactly(length) if length is not None else reader.read())
    return status, data


async def one_request(target: Target, source: str, head: bytes, payload: bytes = b"", *,
                      body: bool = True, answer_within_s: float = 15) -> tuple[int, bytes]:
    """One request on its own connection; status 0 when the connection failed or was closed unanswered."""
    writer: asyncio.StreamWriter | None = None
    try:
        reader, writer = await target.connect(source)
        writer.write(head + payload)
        await writer.drain()
        return await asyncio.wait_for(read_response(reader, body=body), answer_within_s)
    except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError, IndexError):
        return 0, b""
    finally:
        if writer is not None:
            writer.close()


async def bounded(jobs: list[Coroutine[Any, Any, tuple[int, bytes]]], concurrency: int) -> list[tuple[int, bytes]]:
    """Await ``jobs``, at most ``concurrency`` at once (a coroutine starts only when awaited)."""
    gate = asyncio.Semaphore(concurrency)

    async def run(job: Coroutine[Any, Any, tuple[int, bytes]]) -> tuple[int, bytes]:
        async with gate:
            return await job

    return list(await asyncio.gather(*(run(job) for job in jobs)))


def counted(results: list[tuple[int, bytes]]) -> dict[str, int]:
    return {str(status): n for status, n in sorted(Counter(status for status, _ in results).items())}


def sources(params: Params) -> list[str]:
    """The attacker's ``sources`` addresses: IPv4 ones on the Pi's loopback (127.66.0.1, ...), or IPv6 ones of one /64."""
    count, prefix = int(params.get("sources", 1)), str(params.get("prefix", ""))
    if prefix:
        return [f"{prefix}{i + 2:x}" for i in range(count)]  # ::1 is the server's
    return [f"127.66.{i // 250}.{i % 250 + 1}" for i in range(count)]


# --- the attacks -----------------------------------------------------------------------------

async def held(target: Target, source: str, head: bytes, *, seconds: float, every_s: float = 1.0) -> str:
    """Send ``head``, then one more byte every ``every_s``: 'open' at the end, 'closed', or the status."""
    try:
        reader, writer = await target.connect(source)
    except (OSError, TimeoutError):
        return "refused"
    deadline = time.monotonic() + seconds
    try:
        writer.write(head)
        await writer.drain()
        for _ in range(int(seconds / every_s) + 2):
            if time.monotonic() >= deadline:
                return "open"
            try:
                line = await asyncio.wait_for(reader.readline(), every_s)
            except TimeoutError:
                writer.write(b"x")
                await writer.drain()
                continue
            if not line:
                return "closed"
            return line.split(b" ", 2)[1].decode() if line.startswith(b"HTTP/") else "closed"
        return "open"
    except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
        return "closed"
    finally:
        writer.close()


async def slow_bodies(target: Target, params: Params) -> Params:
    """Issue 13: POSTs declaring 1,000,000 bytes, one byte every second, from one address."""
    head = request_head("POST", "/api/chat/message", {
        "Content-Type": "application/json", "Content-Length": "1000000", **params.get("headers", {})})
    source = sources(params)[0]
    outcomes = await asyncio.gather(*(
        held(target, source, head, seconds=params["seconds"]) for _ in range(params["connections"])))
    return {"outcomes": dict(Counter(outcomes))}


async def slowloris(target: Target, params: Params) -> Params:
    """Request headers that never end: one byte a second, from one address."""
    head = b"GET /api/health HTTP/1.1\r\nHost: pi5.local\r\nX-Slow: "
    source = sources(params)[0]
    outcomes = await asyncio.gather(*(
        held(target, source, head, seconds=params["seconds"]) for _ in range(params["connections"])))
    return {"outcomes": dict(Counter(outcomes))}


async def probe_flood(target: Target, params: Params) -> Params:
    """Long probes with a 256 KiB event, opened as fast as the attacker can and never read."""
    path = "/api/probe/stream?tokens=12&interval_ms=1000&big_kb=256"
    streams: list[asyncio.StreamWriter] = []
    statuses: Counter[str] = Counter()

    async def open_probe(source: str) -> None:
        try:
            reader, writer = await target.connect(source)
            writer.write(request_head("GET", path, {}))
            status, _ = await asyncio.wait_for(read_response(reader, body=False), 10)
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError, IndexError):
            statuses["0"] += 1
            return
        statuses[str(status)] += 1
        streams.append(writer)  # held open, never read: the backend keeps what it sent

    await asyncio.gather(*(open_probe(source) for source in sources(params) for _ in range(params["per_source"])))
    await asyncio.sleep(max(0.0, params["seconds"] - 2))
    for writer in streams:
        writer.close()
    return {"statuses": dict(sorted(statuses.items()))}


async def chat_flood(target: Target, params: Params) -> Params:
    """Chat POSTs as fast as one address can send them (no token, unless ``headers`` gives one)."""
    body = json.dumps({"message": "flood " + "x" * 2000}).encode()
    head = request_head("POST", "/api/chat/message", {
        "Content-Type": "application/json", "Content-Length": str(len(body)), **params.get("headers", {})})
    jobs = [one_request(target, source, head, body, body=False) for source in sources(params) for _ in range(params["per_source"])]
    return {"statuses": counted(await bounded(jobs, 32))}


async def thread_growth(target: Target, params: Params) -> Params:
    """Long messages into one thread from many addresses, then concurrent reads of it from as many others.

    A thread takes one message at a time (409 while its reply is written): each post reads its
    reply to the end, and one answered 409 tries again until it is taken or the attack's time is up.
    """
    thread, headers = params["thread"], params.get("headers", {})
    body = json.dumps({"message": "grow " + "y" * 7990, "threadId": thread}).encode()
    head = request_head("POST", "/api/chat/message", {
        "Content-Type": "application/json", "Content-Length": str(len(body)), **headers})
    deadline = time.monotonic() + float(params["seconds"])

    async def post(source: str) -> tuple[int, bytes]:
        while True:
            status, answer = await one_request(target, source, head, body)
            if status != 409 or time.monotonic() > deadline:
                return status, answer
            await asyncio.sleep(0.02)

    writers = sources(params)
    posts = await bounded([post(source) for source in writers for _ in range(params["per_source"])], 16)
    # The readers come from addresses of their own: the writers' retries spend their own chat rate.
    readers = sources({**params, "sources": len(writers) + int(params["readers"])})[len(writers):]
    read_head = request_head("GET", f"/api/chat/threads/{thread}", headers)
    reads = await bounded([one_request(target, source, read_head, answer_within_s=30) for source in readers], len(readers))
    return {"posts": counted(posts), "reads": counted(reads), "largest_read": max(len(b) for _, b in reads)}


def bomb_bodies() -> dict[str, bytes]:
    """Issue 13's validation bombs (built when an attack asks: 11 MB)."""
    return {
        "unknown keys": b'{"message": "hi", ' + b",".join(b'"k%05d": 1' % i for i in range(90_000)) + b"}",
        "10 MB": b'{"message": "' + b"z" * 10_000_000 + b'"}',
        "NaN": b'{"message": NaN}',
        "lone surrogate": b'{"message": "\\ud800"}',
        "deep nesting": b'{"message": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
    }


async def answer_to(target: Target, source: str, head: bytes, payload: bytes) -> tuple[int, int, bool]:
    """(status, size of the answer, answered before the body was sent): a refusal from the headers alone
    comes within a second; otherwise the body follows (a server that closes early may cut it short)."""
    writer: asyncio.StreamWriter | None = None
    try:
        reader, writer = await target.connect(source)
        writer.write(head)
        await writer.drain()
        try:
            status, answer = await asyncio.wait_for(read_response(reader), 1.0)
            return status, len(answer), True
        except TimeoutError:
            pass
        writer.write(payload)
        with contextlib.suppress(OSError):
            await writer.drain()
        status, answer = await asyncio.wait_for(read_response(reader), 30)
        return status, len(answer), False
    except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError, IndexError):
        return 0, 0, False
    finally:
        if writer is not None:
            writer.close()


async def bombs(target: Target, params: Params) -> Params:
    """Each validation bomb ``rounds`` times, 4 at once: the status and size of each answer, and whether it came unread."""
    answers: dict[str, list[tuple[int, int, bool]]] = {}
    source = sources(params)[0]
    gate = asyncio.Semaphore(4)
    for name, payload in bomb_bodies().items():
        head = request_head("POST", "/api/chat/message", {
            "Content-Type": "application/json", "Content-Length": str(len(payload)), **params.get("headers", {})})

        async def one(head: bytes = head, payload: bytes = payload) -> tuple[int, int, bool]:
            async with gate:
                return await answer_to(target, source, head, payload)

        answers[name] = list(await asyncio.gather(*(one() for _ in range(params["rounds"]))))
    return {"answers": answers}


async def cross_site(target: Target, params: Params) -> Params:
    """A top-level navigation from another site: GET with the session cookie, marked cross-site."""
    head = request_head("GET", f"/api/chat/message/stream?message={params['marker']}&threadId={params['thread']}", {
        "Cookie": f"backend_session={params['token']}", "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"})
    results = [await one_request(target, sources(params)[0], head, body=False) for _ in range(params["rounds"])]
    return {"statuses": counted(results)}


ATTACKS: dict[str, Callable[[Target, Params], Coroutine[Any, Any, Params]]] = {
    "slow_bodies": slow_bodies, "slowloris": slowloris, "probe_flood": probe_flood, "chat_flood": chat_flood,
    "thread_growth": thread_growth, "bombs": bombs, "cross_site": cross_site,
}


# --- the legitimate client and the meters ----------------------------------------------------

def health_once(spec: Params) -> tuple[int, float]:
    """One /api/health on a fresh connection from 127.0.0.1: (status, seconds); status 0 on failure."""
    kind = http.client.HTTPSConnection if spec.get("tls") else http.client.HTTPConnection
    extra: Params = {"context": tls_context()} if spec.get("tls") else {}
    connection = kind(spec["host"], int(spec["port"]), timeout=spec.get("timeout_s", 2.0),
                      source_address=("127.0.0.1", 0), **extra)
    start = time.monotonic()
    try:
        connection.request("GET", "/api/health", headers={"Host": "pi5.local"})
        response = connection.getresponse()
        response.read()
        return response.status, time.monotonic() - start
    except OSError:
        return 0, time.monotonic() - start
    finally:
        connection.close()


def memory_files(pid: int) -> tuple[Path, Path, str]:
    """The container's memory cgroup (v1 or v2): usage file, stat file, and the stat's inactive-file key."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        number, controllers, path = line.split(":", 2)
        if controllers == "memory":
            base = Path("/sys/fs/cgroup/memory") / path.lstrip("/")
            return base / "memory.usage_in_bytes", base / "memory.stat", "total_inactive_file"
        if number == "0" and controllers == "":
            base = Path("/sys/fs/cgroup") / path.lstrip("/")
            return base / "memory.current", base / "memory.stat", "inactive_file"
    raise RuntimeError(f"no memory cgroup for pid {pid}")


def memory_used(usage: Path, stat: Path, inactive_key: str) -> int:
    """What `docker stats` shows: usage without the inactive page cache."""
    inactive = next((int(line.split()[1]) for line in stat.read_text().splitlines()
                     if line.startswith(inactive_key + " ")), 0)
    return int(usage.read_text()) - inactive


def established_on(port: int) -> int:
    """TCP connections established to ``port`` on this Pi (what the backend's published port holds)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                count += 1
    return count


def watch(params: Params) -> Params:
    """The legitimate client and the meters, until ``stop_file`` appears (at most 5 minutes)."""
    stop, deadline = Path(params["stop_file"]), time.monotonic() + 300

    def watching() -> bool:
        return time.monotonic() < deadline and not stop.exists()
    usage, stat, key = memory_files(int(params["backend_pid"]))
    memory: list[int] = []
    held_max = [0]

    def meters() -> None:
        while watching():
            memory.append(memory_used(usage, stat, key))
            held_max[0] = max(held_max[0], established_on(int(params["backend_port"])))
            time.sleep(0.1)

    meter = threading.Thread(target=meters, daemon=True)
    meter.start()
    health: list[tuple[int, float]] = []
    while watching():
        health.append(health_once(params["health"]))
        time.sleep(0.2)
    meter.join()
    return {"health": health, "memory_max": max(memory), "memory_first": memory[0], "held_max": held_max[0]}


def main(argv: list[str]) -> int:
    mode, params = argv[1], json.loads(argv[2])
    if mode == "watch":
        result = watch(params)
    else:
        started = time.monotonic()
        result = asyncio.run(ATTACKS[mode](Target(params["target"]), params))
        result["took_s"] = round(time.monotonic() - started, 2)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    socket.setdefaulttimeout(30)
    sys.exit(main(sys.argv))
