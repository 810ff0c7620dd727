"""Replies through Redis: resume and replay, two clients on one reply, expiry, and the faults
(a worker killed, Redis down and back, several API processes on one port).

Each stack is real: a redis-server with the redis role's ACL, ``python -m app.worker`` and
``python -m app`` (tests/backend/backend_harness.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis

from app.delivery import NOT_TAKEN, WORKER_GONE
from app.replies import UNAVAILABLE, AppendCall, Appended, ReplyQueue, lease_key, meta_key, reply_key
from app.settings import Settings
from app.worker import GONE, TAKEN, AppendBatcher, ReplyWriter
from tests.backend.backend_client import Block, SSEConnection, events, get_json, post_json
from tests.backend.backend_harness import BACKEND_DIR, BackendProcess, Spawner, clean_env
from tests.redis_server import RedisServer

LONG = " ".join(f"w{i}" for i in range(120))  # ~2.5 s of reply at 20 ms a token
CHAT_LOCATION = re.compile(r"^/api/chat/replies/[0-9a-f]{32}$")
PROBE_LOCATION = re.compile(r"^/api/probe/replies/[0-9a-f]{32}$")


def store(backend: BackendProcess) -> redis.Redis:
    return redis.Redis(port=backend.redis.port, password=backend.redis.password, decode_responses=True)


def joined(evts: list[Block]) -> str:
    return "".join(e.data["content"] for e in evts if e.data["type"] == "token")


def assert_whole(evts: list[Block]) -> None:
    """Ids 1..n once each, one done last, whose sha256 is the joined tokens'."""
    assert [e.id for e in evts] == list(range(1, len(evts) + 1)), "an id missing or twice"
    assert [e.data["type"] for e in evts].count("done") == 1
    assert evts[-1].data["type"] == "done"
    assert evts[-1].data["content"]["sha256"] == hashlib.sha256(joined(evts).encode()).hexdigest()


def read_until_token(conn: SSEConnection, count: int) -> list[Block]:
    seen: list[Block] = []
    for block in conn.iter_blocks():
        seen.append(block)
        if len([b for b in seen if b.is_event and b.data["type"] == "token"]) == count:
            return seen
    pytest.fail("the reply ended early")


def test_every_sse_response_names_its_reply(demo_backend: BackendProcess) -> None:
    with post_json(demo_backend.port, "/api/chat/message", {"message": "where"}) as conn:
        conn.read_all()
        assert CHAT_LOCATION.match(conn.headers["content-location"])
    with SSEConnection(demo_backend.port, "GET", "/api/chat/message/stream?message=where") as conn:
        conn.read_all()
        assert CHAT_LOCATION.match(conn.headers["content-location"])
    with SSEConnection(demo_backend.port, "GET", "/api/probe/stream?tokens=2&interval_ms=0") as conn:
        conn.read_all()
        assert PROBE_LOCATION.match(conn.headers["content-location"])


def test_resume_after_last_event_id_joins_to_the_done(demo_backend: BackendProcess) -> None:
    with post_json(demo_backend.port, "/api/chat/message", {"message": LONG}) as conn:
        first = events(read_until_token(conn, 10))
        location = conn.headers["content-location"]
    with SSEConnection(demo_backend.port, "GET", location, headers={"Last-Event-ID": str(first[-1].id)}) as resumed:
        blocks = resumed.read_all()
    assert blocks[0].raw == b": open"
    assert blocks[1].fields == {"retry": "3000"}
    assert resumed.headers["content-location"] == location
    assert_whole(first + events(blocks))
    assert joined(first + events(blocks)).startswith("You said: w0 w1")


def test_replay_without_last_event_id_is_the_whole_reply_as_sent(demo_backend: BackendProcess) -> None:
    with post_json(demo_backend.port, "/api/chat/message", {"message": "again"}) as conn:
        live = events(conn.read_all())
        location = conn.headers["content-location"]
    with SSEConnection(demo_backend.port, "GET", location) as replay:
        replayed = events(replay.read_all())
    assert [b.raw for b in replayed] == [b.raw for b in live], "the same events, ts and all"
    assert_whole(replayed)
    # A Last-Event-ID no browser sends (not a small number) replays it whole too.
    with SSEConnection(demo_backend.port, "GET", location, headers={"Last-Event-ID": "x1"}) as odd:
        assert [b.raw for b in events(odd.read_all())] == [b.raw for b in live]


def test_two_clients_on_one_reply_get_the_same_events_live(demo_backend: BackendProcess) -> None:
    with post_json(demo_backend.port, "/api/chat/message", {"message": LONG}) as first:
        head = read_until_token(first, 2)
        with SSEConnection(demo_backend.port, "GET", first.headers["content-location"]) as second:
            rest_first = first.iter_blocks()
            other = events(second.read_all())
            mine = events(head) + events(list(rest_first))
    assert [b.raw for b in other] == [b.raw for b in mine]
    assert_whole(mine)
    tokens = [b.at for b in other if b.data["type"] == "token"]
    assert tokens[-1] - tokens[0] > 1.0, "the second client followed the reply live, not at its end"


def test_an_unknown_reply_answers_expired_and_ends(demo_backend: BackendProcess) -> None:
    path = "/api/chat/replies/" + "0" * 32
    with SSEConnection(demo_backend.port, "GET", path, headers={"Last-Event-ID": "3"}) as conn:
        blocks = conn.read_all()
    assert conn.status == 200
    assert conn.headers["content-location"] == path
    assert [b.raw for b in blocks[:2]] == [b": open", b"retry: 3000"]
    (expired,) = blocks[2:]
    assert set(expired.fields) == {"data"}, "no id: Last-Event-ID stays the last real one"
    assert expired.data["type"] == "expired"
    assert expired.data["content"] == "this reply has expired; reload the thread"
    assert conn.decoder.finished


def test_a_finished_reply_is_kept_for_the_ttl_then_expires(demo_backend: BackendProcess) -> None:
    with post_json(demo_backend.port, "/api/chat/message", {"message": "keep"}) as conn:
        conn.read_all()
        reply = conn.headers["content-location"].rsplit("/", 1)[1]
    db = store(demo_backend)
    assert 590 < db.ttl(reply_key(reply)) <= 600
    assert 590 < db.ttl(meta_key(reply)) <= 600
    assert not db.exists(lease_key(reply)), "the worker dropped its lease at done"
    assert db.hgetall(meta_key(reply))["kind"] == "chat"
    db.delete(reply_key(reply), meta_key(reply))  # what the TTL does
    with SSEConnection(demo_backend.port, "GET", f"/api/chat/replies/{reply}") as after:
        assert [e.data["type"] for e in after.read_all() if e.is_event] == ["expired"]


def test_chat_and_probe_replies_stay_on_their_own_routes(demo_backend: BackendProcess) -> None:
    with post_json(demo_backend.port, "/api/chat/message", {"message": "mine"}) as conn:
        conn.read_all()
        chat = conn.headers["content-location"].rsplit("/", 1)[1]
    with SSEConnection(demo_backend.port, "GET", "/api/probe/stream?tokens=2&interval_ms=0") as conn:
        conn.read_all()
        probe = conn.headers["content-location"].rsplit("/", 1)[1]
    for path in (f"/api/probe/replies/{chat}", f"/api/chat/replies/{probe}"):
        with SSEConnection(demo_backend.port, "GET", path) as conn:
            assert [e.data["type"] for e in conn.read_all() if e.is_event] == ["expired"], path
    with SSEConnection(demo_backend.port, "GET", f"/api/probe/replies/{probe}") as conn:
        assert_whole(events(conn.read_all()))
    for bad in ("0" * 31, "0" * 32 + "0", "A" * 32, "%2e%2e" + "0" * 30, "..%2f" + "0" * 28):
        for route in ("/api/chat/replies/", "/api/probe/replies/"):
            status, headers, body = get_json(demo_backend.port, route + bad)
            assert (status, headers["content-type"]) == (404, "application/json"), route + bad
            if "%2f" not in bad:  # the others reach the route, which answers before asking Redis
                assert body == {"detail": "no such reply"}


def test_a_worker_killed_mid_reply_ends_it_with_error_then_done(spawn: Spawner) -> None:
    backend = spawn(BACKEND_TOKEN_INTERVAL_MS="50", BACKEND_WORKER_LEASE_MS="1000").start().wait_ready()
    with post_json(backend.port, "/api/chat/message", {"message": LONG, "threadId": "killed"}) as conn:
        head = read_until_token(conn, 3)
        assert backend.worker is not None
        backend.worker.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        evts = events(head) + events(conn.read_all())
        took = time.monotonic() - killed_at
    assert [e.data["type"] for e in evts][-2:] == ["error", "done"]
    assert evts[-2].data["content"] == WORKER_GONE
    assert_whole(evts)
    assert evts[-1].data["content"]["tokens"] == len([e for e in evts if e.data["type"] == "token"])
    assert 0.9 < took < 8, "ended once the lease (1 s) ran out, not when the socket timed out (15 s)"
    # A second client on the same reply reads the same end: there is one done, in Redis.
    with SSEConnection(backend.port, "GET", conn.headers["content-location"]) as replay:
        assert [b.raw for b in events(replay.read_all())] == [b.raw for b in evts]
    # A client that resumes after the done (it did not close) is not kept waiting forever.
    with SSEConnection(backend.port, "GET", conn.headers["content-location"],
                       headers={"Last-Event-ID": str(evts[-1].id)}) as late:
        assert events(late.read_all()) == []
    # The next worker lets go of the dead one's job, and takes new ones.
    backend.start_worker()
    db = store(backend)
    deadline = time.monotonic() + 6
    while db.xpending("pi5:jobs", "workers")["pending"]:
        assert time.monotonic() < deadline, "the dead worker's job stayed pending"
        time.sleep(0.1)
    assert db.xlen("pi5:jobs") == 0
    with post_json(backend.port, "/api/chat/message", {"message": "next", "threadId": "killed"}) as after:
        assert events(after.read_all())[-1].data["type"] == "done"


def test_a_worker_killed_with_no_one_watching_is_ended_by_the_next_worker(spawn: Spawner) -> None:
    """No client reads the reply (the phone went away) when its worker is killed: the next
    worker's sweep ends it with the same error + done a delivery would write, so its thread
    takes the next message at once instead of answering 409 until BACKEND_REPLY_TTL_S."""
    backend = spawn(BACKEND_TOKEN_INTERVAL_MS="50", BACKEND_WORKER_LEASE_MS="1000").start().wait_ready()
    with post_json(backend.port, "/api/chat/message", {"message": LONG, "threadId": "unwatched"}) as conn:
        read_until_token(conn, 3)
        reply = conn.headers["content-location"].rpartition("/")[2]
    db = store(backend)
    assert backend.worker is not None
    backend.worker.send_signal(signal.SIGKILL)
    backend.worker.wait(10)
    assert db.xpending("pi5:jobs", "workers")["pending"] == 1, "the dead worker's job is pending"
    backend.start_worker()
    deadline = time.monotonic() + 8
    while db.xpending("pi5:jobs", "workers")["pending"]:
        assert time.monotonic() < deadline, "the dead worker's job stayed pending"
        time.sleep(0.1)
    entries: Any = db.xrange(reply_key(reply))
    stored = [json.loads(fields["e"]) for _, fields in entries]
    assert [e["type"] for e in stored][-2:] == ["error", "done"], "the swept reply was left unended"
    assert stored[-2]["content"] == WORKER_GONE
    assert stored[-1]["content"]["tokens"] == len([e for e in stored if e["type"] == "token"]) >= 3
    with post_json(backend.port, "/api/chat/message", {"message": "next", "threadId": "unwatched"}) as after:
        evts = events(after.read_all())
    assert after.status == 200
    assert_whole(evts)


def test_a_message_whose_job_cannot_be_queued_leaves_its_thread_free(spawn: Spawner) -> None:
    """Redis refuses the job after the thread was claimed for it (here its queue key holds a
    string: a real Redis error between the claim and the XADD): 503, and the thread (and the
    requestId) take the next message at once, not after BACKEND_REPLY_TTL_S."""
    backend = spawn(BACKEND_TOKEN_INTERVAL_MS="0", BACKEND_CHAT_RATE_PER_S="0").start().wait_ready()
    db = store(backend)
    request_path = "/api/chat/message/stream?message=again&threadId=unqueued-rid&requestId=unqueued-request-1"
    db.delete("pi5:jobs")
    db.set("pi5:jobs", "not a stream")
    try:
        with post_json(backend.port, "/api/chat/message", {"message": "first", "threadId": "unqueued"}) as conn:
            body = conn.read_body()
        assert (conn.status, body) == (503, b'{"detail":"%s"}' % UNAVAILABLE.encode())
        with SSEConnection(backend.port, "GET", request_path) as conn:
            conn.read_body()
        assert conn.status == 503
    finally:
        db.delete("pi5:jobs")  # the worker makes its group again (NOGROUP)
    for conn in (post_json(backend.port, "/api/chat/message", {"message": "again", "threadId": "unqueued"}),
                 SSEConnection(backend.port, "GET", request_path)):  # fmt: skip
        with conn:
            conn.read_head()
            assert conn.status == 200, "the refused message left its thread claimed"
            assert_whole(events(conn.read_all()))


def test_a_reply_longer_than_the_ttl_keeps_its_thread(spawn: Spawner) -> None:
    """The thread's claim lives as long as its reply is generated, not BACKEND_REPLY_TTL_S from
    its start: a message sent after the TTL into a thread still answering is 409."""
    ttl_s = 10  # the setting's lower bound; the reply runs ~15 s (120 words, 120 ms each)
    backend = spawn(BACKEND_TOKEN_INTERVAL_MS="120", BACKEND_REPLY_TTL_S=str(ttl_s),
                    BACKEND_WORKER_LEASE_MS="1000", BACKEND_CHAT_RATE_PER_S="0").start().wait_ready()  # fmt: skip
    with post_json(backend.port, "/api/chat/message", {"message": LONG, "threadId": "long"}) as first:
        head = read_until_token(first, 1)
        time.sleep(max(0.0, first.started + ttl_s + 1 - time.monotonic()))
        with post_json(backend.port, "/api/chat/message", {"message": "too soon", "threadId": "long"}) as second:
            second.read_head()
            assert second.status == 409, "the thread's claim expired while its reply was still generated"
            assert second.headers["content-location"] == first.headers["content-location"]
        evts = events(head) + events(first.read_all())
    assert_whole(evts)


def test_a_reply_no_worker_takes_ends_with_error_then_done(spawn: Spawner) -> None:
    backend = spawn(BACKEND_PROVIDER_TIMEOUT_S="1", BACKEND_WORKER_LEASE_MS="1000").start().wait_ready()
    assert backend.worker is not None
    backend.worker.terminate()
    backend.worker.wait(10)
    started = time.monotonic()
    with post_json(backend.port, "/api/chat/message", {"message": "anyone?"}) as conn:
        evts = events(conn.read_all())
    assert [e.data["type"] for e in evts] == ["error", "done"]
    assert evts[0].data["content"] == NOT_TAKEN
    assert evts[1].data["content"]["tokens"] == 0
    assert 0.9 < time.monotonic() - started < 10
    backend.start_worker()  # late: it takes the job, sees the reply over, and generates nothing
    db = store(backend)
    deadline = time.monotonic() + 10
    while db.xlen("pi5:jobs"):
        assert time.monotonic() < deadline, "the late worker never took the job"
        time.sleep(0.1)
    with SSEConnection(backend.port, "GET", conn.headers["content-location"]) as replay:
        assert [b.raw for b in events(replay.read_all())] == [b.raw for b in evts]
    assert "over before it was taken" in backend.log()


def test_redis_down_is_a_clear_503_and_back_needs_no_one(spawn: Spawner) -> None:
    backend = spawn(BACKEND_TOKEN_INTERVAL_MS="0", BACKEND_CHAT_RATE_PER_S="0").start().wait_ready()
    backend.redis.stop()
    status, _, ready = get_json(backend.port, "/api/ready")
    assert status == 503
    assert any(reason.startswith("redis: ") for reason in ready["reasons"]), ready
    for conn in (
        post_json(backend.port, "/api/chat/message", {"message": "anyone?"}),
        SSEConnection(backend.port, "GET", "/api/chat/message/stream?message=anyone"),
        SSEConnection(backend.port, "GET", "/api/probe/stream?tokens=2"),
        SSEConnection(backend.port, "GET", "/api/chat/replies/" + "1" * 32),
    ):
        with conn:
            body = conn.read_body()
        assert (conn.status, conn.headers["retry-after"]) == (503, "5")
        assert body == b'{"detail":"%s"}' % UNAVAILABLE.encode()

    backend.redis.start()  # empty, as after a restart without a snapshot
    deadline = time.monotonic() + 10
    while get_json(backend.port, "/api/ready")[0] != 200:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    with post_json(backend.port, "/api/chat/message", {"message": "back"}) as conn:
        evts = events(conn.read_all())
    assert conn.status == 200
    assert_whole(evts)
    assert joined(evts).startswith("You said: back")
    assert backend.proc is not None and backend.proc.poll() is None
    assert backend.worker is not None and backend.worker.poll() is None


def test_an_open_stream_ends_with_an_error_after_a_long_outage(spawn: Spawner) -> None:
    backend = spawn(BACKEND_TOKEN_INTERVAL_MS="50", BACKEND_REDIS_OUTAGE_S="1",
                    BACKEND_HEARTBEAT_S="0.2").start().wait_ready()  # fmt: skip
    with post_json(backend.port, "/api/chat/message", {"message": LONG}) as conn:
        head = read_until_token(conn, 2)
        backend.redis.stop(signal.SIGKILL)
        stopped_at = time.monotonic()
        rest = conn.read_all()
        took = time.monotonic() - stopped_at
    last = events(rest)[-1]
    assert last.data["type"] == "error"
    assert "id" not in last.fields, "not part of the reply: resuming later continues after the last real id"
    assert "done" not in [e.data["type"] for e in events(head) + events(rest)]
    assert any(b.comment == "keepalive" for b in rest if b.is_comment), "the client was kept while Redis was away"
    assert 0.9 < took < 10


def test_a_reply_lost_with_a_redis_restart_answers_expired(spawn: Spawner) -> None:
    backend = spawn(BACKEND_TOKEN_INTERVAL_MS="50", BACKEND_WORKER_LEASE_MS="1000",
                    BACKEND_HEARTBEAT_S="0.2").start().wait_ready()  # fmt: skip
    with post_json(backend.port, "/api/chat/message", {"message": LONG, "threadId": "lost"}) as conn:
        head = events(read_until_token(conn, 2))
        backend.redis.stop()
        backend.redis.start()  # nothing saved: the reply, its meta and the queue are gone
        rest = events(conn.read_all())
    assert [e.data["type"] for e in rest][-1] == "expired"
    assert "id" not in rest[-1].fields
    assert [e.id for e in head + rest[:-1]] == list(range(1, len(head) + len(rest))), "no id twice"
    deadline = time.monotonic() + 5
    thread = backend.data_dir / "threads" / "lost.jsonl"
    while "assistant" not in thread.read_text():  # the worker noticed, stopped, and stored it
        assert time.monotonic() < deadline
        time.sleep(0.1)
    stored = json.loads(thread.read_text().splitlines()[-1])
    assert (stored["status"], stored["error"]) == ("interrupted", GONE)


def test_two_processes_serve_one_port(spawn: Spawner) -> None:
    backend = spawn(BACKEND_PROCESSES="2", BACKEND_PROBE_RATE_PER_S="0", BACKEND_HEADER_TIMEOUT_S="0.5").start().wait_ready()
    assert backend.proc is not None
    children = children_of(backend.proc.pid)
    assert len(children) == 2
    held = [SSEConnection(backend.port, "GET", "/api/probe/stream?tokens=4&interval_ms=1000") for _ in range(16)]
    try:
        for conn in held:
            conn.read_head()
            assert conn.status == 200
        serving = {pid for pid in children if established_sockets(backend.port) & socket_inodes(pid)}
        assert serving == set(children), "the kernel spread the connections over both processes"
        healthcheck = subprocess.run([sys.executable, "-m", "app.healthcheck"], cwd=BACKEND_DIR, check=False,
                                     env=clean_env({"BACKEND_PORT": str(backend.port)}))  # fmt: skip
        assert healthcheck.returncode == 0
        for _ in range(4):  # whichever process takes it, unfinished headers are cut off
            with socket.create_connection(("127.0.0.1", backend.port), timeout=5) as slow:
                slow.sendall(b"GET /api/health HTTP/1.1\r\nHost: pi\r\n")
                started = time.monotonic()
                assert slow.recv(1024) == b""
                assert time.monotonic() - started < 5
    finally:
        for conn in held:
            conn.close()
    assert backend.stop() == 0
    assert not [pid for pid in children if Path(f"/proc/{pid}").exists()], "SIGTERM reached every process"


def children_of(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def established_sockets(port: int) -> set[str]:
    """Inodes of established TCP sockets whose local port is ``port`` (the server's side)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == "01":
            inodes.add(fields[9])
    return inodes


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd)
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


@pytest.fixture(scope="module")
def queue_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


def test_appends_are_all_or_nothing_and_a_rescue_yields_to_a_lease(queue_redis: RedisServer) -> None:
    settings = Settings(redis_port=queue_redis.port, redis_password=queue_redis.password)

    async def scenario() -> None:
        queue = ReplyQueue(settings)
        reply = "a" * 32
        try:
            assert (await queue.append(reply, 0, ["e1", "e2"])).last == 2
            refused = await queue.append(reply, 0, ["x"])  # a writer that fell behind
            assert (refused.ok, refused.last, refused.last_event) == (False, 2, "e2")
            assert await queue.take_lease(reply, "w1")
            assert not await queue.take_lease(reply, "w2"), "one worker per reply"
            assert not (await queue.append(reply, 2, ["error", "done"], rescue=True)).ok, "the worker is alive"
            await queue.drop_lease(reply)
            assert (await queue.append(reply, 2, ["error", "done"], rescue=True)).ok
            assert await queue.events(reply) == ["e1", "e2", "error", "done"]

            writer = ReplyWriter(queue, reply, outage_s=1)
            writer.last = 2
            writer.add("late token")  # the worker, after the rescue: refused, and it stops
            await asyncio.sleep(0.2)
            assert writer.lost == TAKEN
            assert await queue.events(reply) == ["e1", "e2", "error", "done"]

            retried = ReplyWriter(queue, "b" * 32, outage_s=1)
            await queue.append("b" * 32, 0, ["t1", "t2"])  # landed, but its answer was lost
            retried.add("t1")
            retried.add("t2")
            await retried.close()  # sent again: recognised as its own, not a conflict
            assert (retried.last, retried.lost) == (2, None)
            assert await queue.events("b" * 32) == ["t1", "t2"]
        finally:
            await queue.aclose()

    asyncio.run(scenario())


def test_many_writers_share_round_trips_and_each_reply_stays_whole(queue_redis: RedisServer) -> None:
    """The worker's batcher: 40 replies written at once in few pipelines, every event once and in
    order; a writer refused in a pipeline stops alone; after Redis lost its scripts they still land."""
    settings = Settings(redis_port=queue_redis.port, redis_password=queue_redis.password)
    pipelines: list[int] = []

    class CountingQueue(ReplyQueue):
        async def append_many(self, calls: Sequence[AppendCall]) -> list[Appended | Exception]:
            pipelines.append(len(calls))
            return await super().append_many(calls)

    async def write(writer: ReplyWriter, events: int) -> None:
        for n in range(events):
            writer.add(f"{writer.reply[:4]} {n}")
            await asyncio.sleep(0)
        await writer.close()

    async def scenario() -> None:
        queue = CountingQueue(settings)
        batcher = AppendBatcher(queue)
        replies = [f"{i:04d}" + "c" * 28 for i in range(40)]
        try:
            late = ReplyWriter(batcher, "d" * 32, outage_s=1)
            await queue.append("d" * 32, 0, ["someone else's"])  # the rescue won: this writer is behind
            await queue.redis.script_flush()  # as after a Redis restart: the first pipeline meets NOSCRIPT
            writers = [ReplyWriter(batcher, reply, outage_s=1) for reply in replies]
            late.add("refused")
            await asyncio.gather(*(write(w, 25) for w in writers), late.close(), return_exceptions=True)
            for reply in replies:
                assert await queue.events(reply) == [f"{reply[:4]} {n}" for n in range(25)], reply
            assert late.lost == TAKEN
            assert await queue.events("d" * 32) == ["someone else's"]
            assert sum(pipelines) < 40 * 25 / 4, f"{sum(pipelines)} appends for 1000 events: not batched"
            assert len(pipelines) < sum(pipelines) / 4, f"{len(pipelines)} pipelines for {sum(pipelines)} appends"
        finally:
            await queue.aclose()

    asyncio.run(scenario())


def test_the_lease_renewal_keeps_a_silent_reply_and_its_thread(queue_redis: RedisServer) -> None:
    """A provider silent for longer than the TTL: the worker's renewal keeps the reply's stream, meta
    and thread claim alive (appends alone would not), and leaves another reply's claim alone."""
    settings = Settings(redis_port=queue_redis.port, redis_password=queue_redis.password, reply_ttl_s=600)

    async def scenario() -> None:
        queue = ReplyQueue(settings)
        reply, other = "e" * 32, "f" * 32
        try:
            assert await queue.claim_thread("silent", reply) is None
            assert (await queue.append(reply, 0, ["status"])).ok
            assert await queue.take_lease(reply, "w1")
            for key in (reply_key(reply), meta_key(reply), "pi5:thread:silent:reply"):
                await queue.redis.expire(key, 2)  # as if the TTL had nearly run out during the silence
            await queue.renew_lease(reply, "silent")
            for key in (reply_key(reply), meta_key(reply), "pi5:thread:silent:reply"):
                assert await queue.redis.ttl(key) > 500, f"{key} was not renewed"
            assert await queue.redis.pttl(lease_key(reply)) > 1000

            await queue.redis.set("pi5:thread:silent:reply", other, ex=2)  # the thread has moved on
            await queue.renew_lease(reply, "silent")
            assert await queue.redis.ttl("pi5:thread:silent:reply") <= 2, "another reply's claim was renewed"
            await queue.renew_lease(reply, None)  # a probe: no thread
            assert await queue.redis.ttl(meta_key(reply)) > 500
        finally:
            await queue.aclose()

    asyncio.run(scenario())
