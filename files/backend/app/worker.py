"""The worker: ``python -m app.worker`` generates replies into Redis; the API processes deliver them.

It takes jobs off ``pi5:jobs`` and ``pi5:jobs:probe`` (consumer group ``workers``), runs the provider for a chat job
(at most BACKEND_WORKER_CONCURRENCY at once) or the probe's generator for a probe job (bounded
by the API's probe cap instead, so a probe flood never takes the chat's places), appends the
events to the reply's stream in batches, holds the reply's lease while it generates, stores the
assistant message when a chat reply ends, and acknowledges the job. On SIGTERM it takes no new
job, lets running replies finish for BACKEND_GRACEFUL_SHUTDOWN_S, then ends the rest with
error + done.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from typing import Any, Protocol

from redis.exceptions import RedisError, ResponseError

from .delivery import settle
from .probe import ProbeParams, probe_tokens
from .providers import Provider, ProviderError, build_provider
from .replies import GROUP, JOBS, PROBE_JOBS, AppendCall, Appended, Job, QueueUnavailableError, ReplyQueue
from .server import configure_logging, load_settings
from .settings import Settings
from .sse import event_json, now_ms
from .storage import StoredMessage, ThreadStore, thread_store
from .streaming import StreamOptions, StreamResult, reply_events

log = logging.getLogger(__name__)

READ_BLOCK_MS = 500  # how long a SIGTERM may wait for the job read to return
BACKOFF_S = (0.1, 0.2, 0.5, 1.0, 2.0)
# After the error + done, for the last append and the stored message. The backend role counts it
# in Docker's stop timeout (roles/backend/vars/main.yml backend_worker_ending_s): keep the two equal.
ENDING_GRACE_S = 5.0
TAKEN = "another process ended this reply (its worker was thought gone)"
LOST = "the reply queue (Redis) stayed unavailable; the reply was given up"
GONE = "the reply is gone from the reply queue (Redis restarted without it)"


class ReplyLostError(Exception):
    """The reply can no longer be written: someone else ended it, or Redis stayed away."""


class Appends(Protocol):
    async def append(self, reply: str, expected_last: int, events: Sequence[str]) -> Appended: ...


class AppendBatcher:
    """Every reply's appends, in one pipeline per round trip to Redis.

    A worker writing hundreds of replies at once would otherwise make one round trip per token
    (half its CPU, measured). The appends asked for while a pipeline is out go in the next one,
    so the batches grow with the load and cost no waiting when it is light.
    """

    def __init__(self, queue: ReplyQueue) -> None:
        self.queue = queue
        self._calls: list[tuple[AppendCall, asyncio.Future[Appended]]] = []
        self._sending: asyncio.Task[None] | None = None

    async def append(self, reply: str, expected_last: int, events: Sequence[str]) -> Appended:
        answer: asyncio.Future[Appended] = asyncio.get_running_loop().create_future()
        self._calls.append(((reply, expected_last, events), answer))
        if self._sending is None or self._sending.done():
            self._sending = asyncio.create_task(self._send())
        return await answer

    async def _send(self) -> None:
        while self._calls:
            calls, self._calls = self._calls, []
            try:
                answers: Sequence[Appended | Exception] = await self.queue.append_many([call for call, _ in calls])
            except (RedisError, OSError) as exc:  # each writer retries, or gives up, on its own
                answers = [exc] * len(calls)
            except BaseException as exc:  # not left waiting forever on a bug or a cancellation
                for _, answer in calls:
                    if not answer.done():
                        answer.set_exception(RedisError(f"append failed: {exc!r}"))
                raise
            for (_, answer), result in zip(calls, answers, strict=True):
                if answer.done():  # its writer was cancelled meanwhile
                    continue
                if isinstance(result, Exception):
                    answer.set_exception(result)
                else:
                    answer.set_result(result)


class ReplyWriter:
    """A reply's events into its stream, batched: those made during one append go in the next."""

    def __init__(self, queue: Appends, reply: str, outage_s: float) -> None:
        self.queue = queue
        self.reply = reply
        self.outage_s = outage_s
        self.last = 0
        self.lost: str | None = None
        self._pending: list[str] = []
        self._flushing: asyncio.Task[None] | None = None

    def add(self, data: str) -> None:
        if self.lost is not None:
            raise ReplyLostError(self.lost)
        self._pending.append(data)
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.create_task(self._flush())

    async def close(self) -> None:
        """Wait for every added event to be written; ReplyLostError when it cannot be."""
        while self._flushing is not None and not self._flushing.done():
            await self._flushing
        if self.lost is not None:
            raise ReplyLostError(self.lost)

    async def _flush(self) -> None:
        while self._pending and self.lost is None:
            batch, self._pending = self._pending, []
            await self._append(batch)

    async def _append(self, batch: list[str]) -> None:
        loop = asyncio.get_running_loop()
        failing_since: float | None = None
        for attempt in range(sys.maxsize):
            try:
                done = await self.queue.append(self.reply, self.last, batch)
            except (RedisError, OSError) as exc:
                failing_since = failing_since or loop.time()
                if loop.time() - failing_since >= self.outage_s:
                    log.warning("reply %s: %s (%s)", self.reply, LOST, exc)
                    self.lost = LOST
                    return
                await asyncio.sleep(BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)])
                continue
            # A refusal that shows our own batch on top: it landed, and only the answer was lost.
            if done.ok or (done.last == self.last + len(batch) and done.last_event == batch[-1]):
                self.last = done.last
                return
            self.lost = GONE if done.last == 0 else TAKEN
            return


class Worker:
    def __init__(self, settings: Settings, provider: Provider, queue: ReplyQueue, store: ThreadStore) -> None:
        self.settings = settings
        self.provider = provider
        self.queue = queue
        self.store = store
        self.name = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.chat_slots = asyncio.Semaphore(settings.worker_concurrency)
        # Chat jobs read but waiting for a place: no more than the places, so jobs stay in Redis.
        self.backlog = asyncio.Semaphore(settings.worker_concurrency)
        self.stopping = asyncio.Event()  # take no new job
        self.ending = asyncio.Event()  # end running replies with error + done
        self.tasks: set[asyncio.Task[None]] = set()
        self.appender = AppendBatcher(queue)

    def stop(self) -> None:
        self.stopping.set()

    async def run(self) -> None:
        log.info("worker %s: provider %s, %d chat replies at once", self.name, self.provider.name,
                 self.settings.worker_concurrency)  # fmt: skip
        await asyncio.gather(self._take(JOBS, self.backlog), self._take(PROBE_JOBS, None))
        await self._drain()

    async def _take(self, key: str, backlog: asyncio.Semaphore | None) -> None:
        """Take jobs off one stream until stopping: chat jobs each after a backlog place; probe
        jobs (capped by the API) at once, in a loop of their own, so a chat backlog never holds
        up the owner's stream check."""
        loop = asyncio.get_running_loop()
        failures, next_sweep = 0, loop.time()
        while await self._room(backlog):
            try:
                if loop.time() >= next_sweep:
                    next_sweep = loop.time() + 2 * self.settings.worker_lease_ms / 1000
                    await self._sweep(key)
                found = await self._read(key)
            except (RedisError, OSError, QueueUnavailableError) as exc:
                _release(backlog)
                if not failures:  # once per outage, not once per retry
                    log.warning("cannot read jobs, retrying: %s", exc)
                await asyncio.sleep(BACKOFF_S[min(failures, len(BACKOFF_S) - 1)])
                failures += 1
                continue
            if failures:
                log.info("reading jobs again")
            failures = 0
            if found is None:
                _release(backlog)
            else:
                task = asyncio.create_task(self._job(key, *found))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)

    async def _room(self, backlog: asyncio.Semaphore | None) -> bool:
        """Wait for room for one more job (a backlog place, if any): False once stopping, placeless."""
        if backlog is None:
            return not self.stopping.is_set()
        acquire = asyncio.ensure_future(backlog.acquire())
        stopping = asyncio.ensure_future(self.stopping.wait())
        await asyncio.wait({acquire, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not acquire.done():  # SIGTERM while every place waits for a chat slot
            acquire.cancel()
            return False
        if self.stopping.is_set():
            backlog.release()
            return False
        return True

    async def _read(self, key: str) -> tuple[str, dict[str, str]] | None:
        """The next job of ``key`` for this worker, None after READ_BLOCK_MS without one."""
        try:
            found: Any = await self.queue.redis.xreadgroup(GROUP, self.name, {key: ">"}, count=1, block=READ_BLOCK_MS)
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            await self._create_group(key)  # a new Redis (or one restarted without its data)
            return None
        for _, entries in found or []:
            for entry_id, fields in entries:
                return str(entry_id), {str(k): str(v) for k, v in fields.items()}
        return None

    async def _sweep(self, key: str) -> None:
        """Let go of jobs that a worker which died (SIGKILL, a crash) took and never finished.

        Their replies end by the lease rule: a delivery process whose client waits on one
        writes error + done; with no client watching, this sweep does (settle, the
        same code), or the thread would answer 409 until the reply's TTL. A job whose reply
        still has a lease, or that this worker holds, is left alone. Looked for at start and
        every two leases.
        """
        idle_ms = 2 * self.settings.worker_lease_ms
        with contextlib.suppress(ResponseError):  # NOGROUP: nothing pending anywhere
            stale: Any = await self.queue.redis.xpending_range(key, GROUP, min="-", max="+", count=100, idle=idle_ms)
            for entry in stale:
                entry_id, consumer = str(entry["message_id"]), str(entry["consumer"])
                if consumer == self.name:
                    continue
                jobs: Any = await self.queue.redis.xrange(key, entry_id, entry_id)
                reply = str(jobs[0][1].get("reply", "")) if jobs else ""
                if reply and not await self._over(reply):
                    continue  # still generated (a lease), or not yet given up on: the next sweep looks again
                log.info("job %s of %s was left unfinished; let go", entry_id, consumer)
                await self._done_with(key, entry_id)

    async def _over(self, reply: str) -> bool:
        """Whether a swept job's reply is over: expired, finished, or ended by this call."""
        state, _ = await settle(self.queue, reply, unclaimed_s=self.settings.provider_timeout_s)
        return state != "running"

    async def _create_group(self, key: str) -> None:
        with contextlib.suppress(ResponseError):  # BUSYGROUP: another worker made it first
            await self.queue.redis.xgroup_create(key, GROUP, id="0", mkstream=True)

    async def _drain(self) -> None:
        """Let running replies finish within the grace period, then end the rest."""
        if self.tasks:
            log.info("stopping: %d replies running", len(self.tasks))
            await asyncio.wait(set(self.tasks), timeout=self.settings.graceful_shutdown_s)
        self.ending.set()
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=ENDING_GRACE_S)

    async def _job(self, key: str, entry_id: str, fields: dict[str, str]) -> None:
        holds_place = key == JOBS  # a chat-stream job holds a backlog place until it runs
        try:
            job = Job.from_fields(fields)
            # A probe runs at once (the API caps probes); a chat reply waits for a chat slot.
            slot: contextlib.AbstractAsyncContextManager[Any] = (
                contextlib.nullcontext() if job.kind == "probe" else self.chat_slots
            )
            async with slot:
                if holds_place:
                    self.backlog.release()
                    holds_place = False
                await self._reply(job)
        except (ValueError, KeyError) as exc:
            log.warning("job %s is not one of ours: %s", entry_id, exc)
        except (RedisError, OSError, QueueUnavailableError) as exc:  # its reply ends by the lease rule
            log.warning("job %s: the reply queue failed: %s", entry_id, exc)
        finally:
            if holds_place:
                self.backlog.release()
            await self._done_with(key, entry_id)

    async def _done_with(self, key: str, entry_id: str) -> None:
        try:
            async with self.queue.redis.pipeline(transaction=False) as pipe:
                pipe.xack(key, GROUP, entry_id)
                pipe.xdel(key, entry_id)  # the queue holds only jobs not yet done
                await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("cannot acknowledge job %s: %s", entry_id, exc)

    async def _reply(self, job: Job) -> None:
        if await self.queue.meta(job.reply) is None or (await self.queue.last_entry(job.reply))[0]:
            # Expired, or already ended (no worker took it in time): nothing to generate for.
            log.warning("reply %s was over before it was taken; skipped", job.reply)
            return
        if not await self.queue.take_lease(job.reply, self.name):
            log.warning("reply %s is held by another worker; skipped", job.reply)
            return
        renewing = asyncio.create_task(self._renew(job))
        result = StreamResult()
        writer = ReplyWriter(self.appender, job.reply, self.settings.redis_outage_s)
        stored = job.kind != "chat"
        try:
            events = reply_events(self._tokens(job), options=self._options(job), shutdown=self.ending, result=result)
            async with aclosing(events) as stream:
                async for event in stream:
                    if event.kind == "done" and not stored:
                        # Stored before anyone can read done: a message sent right after it has
                        # this reply in its history.
                        stored = True
                        await save_reply(self.store, job.thread_id, result)
                    writer.add(event_json(event.kind, job.thread_id, event.content))
            await writer.close()
        except ReplyLostError as exc:
            result.outcome, result.error = "interrupted", str(exc)
        finally:
            renewing.cancel()
            with contextlib.suppress(RedisError, OSError):
                await self.queue.drop_lease(job.reply)
            if not stored:
                await save_reply(self.store, job.thread_id, result)

    def _options(self, job: Job) -> StreamOptions:
        if job.kind == "probe":  # its silence is part of the test, not a stalled model
            return StreamOptions(max_events=self.settings.reply_max_events)
        return StreamOptions(
            idle_timeout_s=self.settings.provider_timeout_s,
            preface=(("status", "generating"),),
            max_events=self.settings.reply_max_events,
        )

    async def _tokens(self, job: Job) -> AsyncIterator[str]:
        if job.kind == "probe":
            source = probe_tokens(ProbeParams(**job.params))
        else:
            try:
                conversation = await self.store.turns(job.thread_id)
            except OSError as exc:
                raise ProviderError(f"cannot read the thread: {exc.strerror or exc}") from exc
            source = self.provider.stream(conversation)
        try:
            async for token in source:
                yield token
        finally:
            aclose = getattr(source, "aclose", None)
            if aclose is not None:
                await aclose()

    async def _renew(self, job: Job) -> None:
        """Keep the lease, and a chat reply's claim on its thread, while the reply is generated
        (every third of the lease)."""
        thread_id = job.thread_id if job.kind == "chat" else None  # probes claim no thread
        while True:
            await asyncio.sleep(self.settings.worker_lease_ms / 3000)
            try:
                await self.queue.renew_lease(job.reply, thread_id)
            except (RedisError, OSError) as exc:
                log.warning("reply %s: cannot renew the lease: %s", job.reply, exc)


def _release(backlog: asyncio.Semaphore | None) -> None:
    """Give a backlog place back, if the stream has places."""
    if backlog is not None:
        backlog.release()


async def save_reply(store: ThreadStore, thread_id: str, result: StreamResult) -> None:
    reply = StoredMessage(
        role="assistant",
        content=result.text,
        ts=now_ms(),
        status=result.outcome,
        error=result.error,
    )
    try:
        await store.append(thread_id, reply, capped=False)
    except OSError:
        log.exception("cannot store the reply of thread %s", thread_id)


def build_worker(settings: Settings, provider: Provider | None = None) -> Worker:
    """A worker for these settings; ``provider`` overrides the one they name."""
    return Worker(settings, provider or build_provider(settings), ReplyQueue(settings), thread_store(settings))


async def serve(worker: Worker) -> None:
    """Run the worker until SIGTERM/SIGINT (or its ``stop()``), then release what it holds."""
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):  # not in the main thread (tests)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, worker.stop)
    try:
        await worker.run()
    finally:
        await worker.provider.aclose()
        await worker.queue.aclose()


def main() -> int:
    settings = load_settings()
    if settings is None:
        return 2
    configure_logging(settings.log_level)
    asyncio.run(serve(build_worker(settings)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
