"""Replies in flight, in Redis: the job queue, each reply's event stream, its meta and its lease.

Keys (fixed, README "What lives in Redis"):

    pi5:jobs                   Stream of chat jobs (fields kind, reply, job); consumer group ``workers``
    pi5:jobs:probe             The same for probe jobs
    pi5:reply:<id>             Stream of the reply's events: entry id ``<n>-0``, field ``e`` = the
                               event's JSON; n is the SSE ``id:``
    pi5:reply:<id>:meta        hash {kind, threadId, created}: tells "not started" from "expired"
    pi5:reply:<id>:lease       the generating worker's id, expiring unless refreshed
    pi5:request:<requestId>    ``<replyId> <fingerprint>``: the reply an EventSource GET's
                               requestId started (its reconnections resume that reply)

Events are only ever appended by one Lua script that checks the stream's last id first: a
worker's batch, or a delivery process's error + done for a reply whose worker is gone, lands
whole or not at all, so a reply never holds an id twice and never more than one ``done``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import NoScriptError, RedisError

from .settings import Settings
from .sse import now_ms

log = logging.getLogger(__name__)

JOBS = "pi5:jobs"
# Probe jobs have a stream of their own: a backlog of chat jobs never holds up the owner's check.
PROBE_JOBS = "pi5:jobs:probe"
GROUP = "workers"
REPLY_ID_PATTERN = r"^[0-9a-f]{32}$"
REQUEST_ID_PATTERN = r"^[A-Za-z0-9_-]{8,64}$"  # a crypto.randomUUID() fits; nothing to escape in a key
_REPLY_ID = re.compile(REPLY_ID_PATTERN)
# The data of a done event starts so: event_json writes "type" first, compact.
DONE_PREFIX = '{"type":"done"'
UNAVAILABLE = "the reply queue is unavailable (Redis); try again shortly"
PING_TIMEOUT_S = 1.0
MAX_JOBS = 10_000
POOL_SIZE = 64  # connections per process; the hub's blocking read holds one
POOL_WAIT_S = 5.0

Kind = Literal["chat", "probe"]

# KEYS: stream, meta, lease. ARGV: expected last n, TTL s, mode ("work" | "rescue"), events...
# Returns {1, new last n} when appended, else {0, last n, last event} and nothing written.
_APPEND = """
local last, data = 0, false
local top = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #top > 0 then
  last = tonumber(string.match(top[1][1], '^(%d+)'))
  data = top[1][2][2]
end
if last ~= tonumber(ARGV[1]) or (ARGV[3] == 'rescue' and redis.call('EXISTS', KEYS[3]) == 1) then
  return {0, last, data}
end
for i = 4, #ARGV do
  last = last + 1
  redis.call('XADD', KEYS[1], last .. '-0', 'e', ARGV[i])
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
return {1, last}
"""

# A thread takes one message at a time: its next message needs this reply in its history, and a
# reply not yet stored cannot count against the thread's cap (a flood of messages into one thread
# would each bring an uncounted reply). KEYS: the thread's key. ARGV: new reply, TTL s, done
# prefix, thread id, created ms. The reply a thread waits for is read here, so its keys are built
# here too (one Redis, no cluster). Returns the reply still in progress, or false after claiming:
# the new reply's meta is written at once, so a second claim meanwhile sees it in progress.
_CLAIM_THREAD = """
local current = redis.call('GET', KEYS[1])
if current and redis.call('EXISTS', 'pi5:reply:' .. current .. ':meta') == 1 then
  local top = redis.call('XREVRANGE', 'pi5:reply:' .. current, '+', '-', 'COUNT', 1)
  if #top == 0 or string.sub(top[1][2][2], 1, string.len(ARGV[3])) ~= ARGV[3] then
    return current
  end
end
local meta = 'pi5:reply:' .. ARGV[1] .. ':meta'
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('HSET', meta, 'kind', 'chat', 'threadId', ARGV[4], 'created', ARGV[5])
redis.call('EXPIRE', meta, ARGV[2])
return false
"""

# The lease's renewal, with the reply's stream and meta, and the thread's claim while it still
# names this reply. Appends renew the stream and meta, but a provider may be silent for longer than
# BACKEND_REPLY_TTL_S (its timeout is a setting of its own), and a reply may be generated for longer
# (20,000 events at 40 ms are 800 s): a meta or claim that expired meanwhile would make the reply
# "expired" or let a second message start in the thread. KEYS: lease, stream, meta[, thread's key].
# ARGV: lease ms, reply, TTL s.
_RENEW = """
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('EXPIRE', KEYS[3], ARGV[3])
if KEYS[4] and redis.call('GET', KEYS[4]) == ARGV[2] then
  redis.call('EXPIRE', KEYS[4], ARGV[3])
end
return 1
"""


def jobs_key(kind: Kind) -> str:
    """The job stream of a kind of reply."""
    return PROBE_JOBS if kind == "probe" else JOBS


def as_kind(value: str) -> Kind | None:
    return "chat" if value == "chat" else "probe" if value == "probe" else None


def new_reply_id() -> str:
    return uuid.uuid4().hex


def is_reply_id(value: str) -> bool:
    return _REPLY_ID.fullmatch(value) is not None


def reply_key(reply: str) -> str:
    return f"pi5:reply:{reply}"


def meta_key(reply: str) -> str:
    return f"pi5:reply:{reply}:meta"


def lease_key(reply: str) -> str:
    return f"pi5:reply:{reply}:lease"


def thread_key(thread_id: str) -> str:
    return f"pi5:thread:{thread_id}:reply"


def request_key(request_id: str) -> str:
    return f"pi5:request:{request_id}"


def entry_number(entry_id: str) -> int:
    """n of a reply's entry id ``<n>-0``."""
    return int(entry_id.partition("-")[0])


def connect(settings: Settings) -> Redis:
    """A client that fails fast (a few quick retries, then the caller's error path: 503, backoff)
    and holds at most POOL_SIZE connections: a burst of requests waits for one (POOL_WAIT_S)
    instead of opening a connection each, which Redis and the pool would refuse past their caps."""
    pool = BlockingConnectionPool(
        host=settings.redis_host,
        port=settings.redis_port,
        password=settings.redis_password,
        decode_responses=True,
        socket_timeout=5,
        socket_connect_timeout=2,
        health_check_interval=10,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2),
        max_connections=POOL_SIZE,
        timeout=POOL_WAIT_S,
    )
    return Redis.from_pool(pool)


class QueueUnavailableError(Exception):
    """Redis did not answer; the client gets 503 with UNAVAILABLE."""


@dataclass(frozen=True, slots=True)
class Meta:
    kind: Kind
    thread_id: str
    created_ms: int


@dataclass(frozen=True, slots=True)
class Appended:
    ok: bool
    last: int  # the stream's last n after the call
    last_event: str | None = None  # on refusal: the data of the entry at ``last``


# One append: the reply, the last n its writer knows of, the events to add after it.
AppendCall = tuple[str, int, Sequence[str]]


@dataclass(frozen=True, slots=True)
class Job:
    kind: Kind
    reply: str
    thread_id: str
    params: Mapping[str, int]  # the probe's parameters; empty for chat

    @classmethod
    def from_fields(cls, fields: Mapping[str, str]) -> Job:
        """The job of a ``pi5:jobs`` entry (ValueError/KeyError when it is not one of ours)."""
        kind, body = as_kind(fields["kind"]), json.loads(fields["job"])
        if kind is None or not is_reply_id(fields["reply"]):
            raise ValueError(f"not a job: kind {fields['kind']!r}")
        params = {str(k): int(v) for k, v in body.get("params", {}).items()}
        return cls(kind, fields["reply"], str(body["threadId"]), params)


class ReplyQueue:
    """The backend's Redis: one client (a connection pool) per process."""

    def __init__(self, settings: Settings, redis: Redis | None = None) -> None:
        self.redis = redis or connect(settings)
        self.ttl_s = settings.reply_ttl_s
        self.lease_ms = settings.worker_lease_ms
        self._append = self.redis.register_script(_APPEND)
        self._claim_thread = self.redis.register_script(_CLAIM_THREAD)
        self._renew = self.redis.register_script(_RENEW)

    async def aclose(self) -> None:
        await self.redis.aclose()

    async def not_ready_reason(self) -> str | None:
        try:
            async with asyncio.timeout(PING_TIMEOUT_S):
                await self.redis.ping()
        except (RedisError, OSError, TimeoutError) as exc:
            return f"redis: {_describe(exc)}"
        return None

    async def claim_thread(self, thread_id: str, reply: str) -> str | None:
        """Make ``reply`` the one its thread waits for; else the reply still in progress there."""
        try:
            current = await self._claim_thread(
                keys=[thread_key(thread_id)], args=[reply, self.ttl_s, DONE_PREFIX, thread_id, now_ms()]
            )
        except (RedisError, OSError) as exc:
            log.warning("cannot claim thread %s: %s", thread_id, _describe(exc))
            raise QueueUnavailableError(UNAVAILABLE) from exc
        return str(current) if current else None

    async def release_thread(self, reply: str) -> None:
        """Let go of a claim whose message was refused: without its meta the thread is free."""
        try:
            await self.redis.delete(meta_key(reply))
        except (RedisError, OSError) as exc:  # the meta's TTL frees the thread then
            log.warning("cannot release reply %s: %s", reply, _describe(exc))

    async def enqueue(self, job: Job) -> None:
        """Write the reply's meta, then queue its job; QueueUnavailableError when Redis is down."""
        meta = meta_key(job.reply)
        fields = {"kind": job.kind, "reply": job.reply,
                  "job": json.dumps({"threadId": job.thread_id, "params": dict(job.params)})}  # fmt: skip
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(meta, mapping={"kind": job.kind, "threadId": job.thread_id, "created": now_ms()})
                pipe.expire(meta, self.ttl_s)
                # Bounded: jobs queued while no worker runs have had their replies ended (error +
                # done) by then; the oldest go first.
                pipe.xadd(jobs_key(job.kind), fields, maxlen=MAX_JOBS, approximate=True)  # type: ignore[arg-type]
                await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("cannot queue reply %s: %s", job.reply, _describe(exc))
            raise QueueUnavailableError(UNAVAILABLE) from exc

    async def claim_request(self, request_id: str, value: str) -> str | None:
        """Take the requestId for ``value`` (None), or the value it already has: one SET NX GET,
        so of two requests with one id exactly one starts a reply. Kept as long as a reply."""
        try:
            earlier = await self.redis.set(request_key(request_id), value, ex=self.ttl_s, nx=True, get=True)
        except (RedisError, OSError) as exc:
            raise QueueUnavailableError(UNAVAILABLE) from exc
        return None if earlier is None else _str(earlier)

    async def claimed_request(self, request_id: str) -> str | None:
        """The value the requestId was taken for, None when it never was or has expired."""
        try:
            value = await self.redis.get(request_key(request_id))
        except (RedisError, OSError) as exc:
            raise QueueUnavailableError(UNAVAILABLE) from exc
        return None if value is None else _str(value)

    async def release_request(self, request_id: str) -> None:
        """Give the requestId back (its reply could not start); best effort: it expires anyway."""
        try:
            await self.redis.delete(request_key(request_id))
        except (RedisError, OSError) as exc:
            log.warning("cannot release request %s: %s", request_id, _describe(exc))

    async def meta(self, reply: str) -> Meta | None:
        """The reply's meta, None when it expired or never was; QueueUnavailableError when Redis is down."""
        try:
            fields = await self.redis.hgetall(meta_key(reply))
        except (RedisError, OSError) as exc:
            raise QueueUnavailableError(UNAVAILABLE) from exc
        text = {_str(k): _str(v) for k, v in fields.items()}
        kind = as_kind(text.get("kind", ""))
        if kind is None:
            return None
        return Meta(kind, text.get("threadId", ""), int(text.get("created") or 0))

    async def append(self, reply: str, expected_last: int, events: Sequence[str], *, rescue: bool = False) -> Appended:
        """Append events after entry ``expected_last``, all or none (see _APPEND)."""
        mode = "rescue" if rescue else "work"
        keys = [reply_key(reply), meta_key(reply), lease_key(reply)]
        return _appended(await self._append(keys=keys, args=[expected_last, self.ttl_s, mode, *events]))

    async def append_many(self, calls: Sequence[AppendCall]) -> list[Appended | Exception]:
        """Several workers' appends in one round trip (a pipeline of the script), each all or none.

        One answer per call, in order: its Appended, or the error Redis gave that call alone. The
        script runs by its hash; after a Redis restart emptied the script cache, it is loaded once
        and the calls refused for that run again. A lost connection raises, as ``append`` does.
        """
        answers: list[Any] = [NoScriptError()] * len(calls)
        for attempt in range(2):
            redo = [i for i, answer in enumerate(answers) if isinstance(answer, NoScriptError)]
            if not redo:
                break
            if attempt:
                await self.redis.script_load(_APPEND)
            async with self.redis.pipeline(transaction=False) as pipe:
                for i in redo:
                    reply, expected_last, events = calls[i]
                    pipe.evalsha(self._append.sha, 3, reply_key(reply), meta_key(reply), lease_key(reply),
                                 expected_last, self.ttl_s, "work", *events)  # fmt: skip
                for i, answer in zip(redo, await pipe.execute(raise_on_error=False), strict=True):
                    answers[i] = answer
        return [answer if isinstance(answer, Exception) else _appended(answer) for answer in answers]

    async def read(self, cursors: Mapping[str, int], *, count: int, block_ms: int) -> list[tuple[str, list[tuple[int, str]]]]:
        """XREAD BLOCK of reply streams past each cursor: [(key, [(n, event), ...]), ...]."""
        streams: dict[Any, Any] = {key: f"{n}-0" for key, n in cursors.items()}
        found: Any = await self.redis.xread(streams, count=count, block=block_ms)
        return [
            (_str(key), [(entry_number(_str(entry_id)), _str(fields["e"])) for entry_id, fields in entries])
            for key, entries in found or []
        ]

    async def events(self, reply: str) -> list[str]:
        """Every event of the reply, in order (a rescue's summary of what was sent)."""
        entries = await self.redis.xrange(reply_key(reply)) or []
        return [_str((fields or {}).get("e")) for _, fields in entries]

    async def last_entry(self, reply: str) -> tuple[int, str | None]:
        """(n, data) of the reply's last entry; (0, None) when it has none."""
        top = await self.redis.xrevrange(reply_key(reply), count=1)
        if not top:
            return 0, None
        entry_id, fields = top[0]
        data = (fields or {}).get("e")
        return entry_number(_str(entry_id)), None if data is None else _str(data)

    async def lease_held(self, reply: str) -> bool:
        return bool(await self.redis.exists(lease_key(reply)))

    async def take_lease(self, reply: str, worker: str) -> bool:
        """Hold the reply's lease unless another worker does."""
        return bool(await self.redis.set(lease_key(reply), worker, px=self.lease_ms, nx=True))

    async def renew_lease(self, reply: str, thread_id: str | None) -> None:
        """Renew the lease, the reply's stream and meta, and the thread's claim (a chat reply's
        ``thread_id``) if it names ``reply``."""
        keys = [lease_key(reply), reply_key(reply), meta_key(reply)]
        if thread_id is not None:
            keys.append(thread_key(thread_id))
        await self._renew(keys=keys, args=[self.lease_ms, reply, self.ttl_s])

    async def drop_lease(self, reply: str) -> None:
        await self.redis.delete(lease_key(reply))


def _appended(answer: Any) -> Appended:
    """The script's answer: {1, last} when appended, {0, last, last event} when refused."""
    if int(answer[0]) == 1:
        return Appended(ok=True, last=int(answer[1]))
    last_event = answer[2] if len(answer) > 2 and isinstance(answer[2], str) else None
    return Appended(ok=False, last=int(answer[1]), last_event=last_event)


def _str(value: object) -> str:
    """A reply value as text (the client decodes; the types say bytes or str)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
