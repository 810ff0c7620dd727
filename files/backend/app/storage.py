"""Chat threads persisted as one JSON-lines file each under <data_dir>/threads/.

One line per message, appended and fsynced: a post costs one small write
however long the thread is, and a crash or power cut can only leave a torn
last line, which reads skip. Plain files keep backup and restore of the data
volume trivial (copy the directory). A thread and the whole store have size
caps, so a client cannot fill the SD card.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import re
import tempfile
import time
import uuid
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .providers import Turn
from .settings import Settings

log = logging.getLogger(__name__)

THREAD_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
_THREAD_ID = re.compile(THREAD_ID_PATTERN)
SUFFIX = ".jsonl"
USED_BYTES_FRESH_S = 10.0
LEGACY_SUFFIX = ".json"  # one JSON document per thread, rewritten whole (before JSON lines)


class StoredMessage(BaseModel):
    role: Literal["user", "assistant"]
    content: str
    ts: int = Field(description="Milliseconds since the Unix epoch.")
    status: Literal["complete", "error", "interrupted"] = "complete"
    error: str | None = None

    def line(self) -> bytes:
        return self.model_dump_json().encode() + b"\n"


class Thread(BaseModel):
    """A thread as served (camelCase on the wire)."""

    model_config = ConfigDict(validate_by_name=True, serialize_by_alias=True)

    thread_id: str = Field(alias="threadId")
    created_at: int = Field(alias="createdAt", description="Milliseconds since the Unix epoch.")
    updated_at: int = Field(alias="updatedAt", description="Milliseconds since the Unix epoch.")
    messages: list[StoredMessage] = []


class StoreFullError(Exception):
    """A cap is reached; ``status`` is 413 (this thread) or 507 (the whole store)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def thread_store(settings: Settings) -> ThreadStore:
    """The store of these settings (the API processes and the worker share the data dir)."""
    return ThreadStore(
        settings.data_dir,
        thread_max_bytes=settings.thread_max_kb * 1024,
        store_max_bytes=settings.store_max_mb * 1024 * 1024,
    )


def new_thread_id() -> str:
    return uuid.uuid4().hex


def is_thread_id(value: str) -> bool:
    return _THREAD_ID.fullmatch(value) is not None


class ThreadStore:
    def __init__(
        self, data_dir: Path, *, thread_max_bytes: int = 1 << 20, store_max_bytes: int = 1 << 30
    ) -> None:
        self.data_dir = data_dir
        self.threads_dir = data_dir / "threads"
        self.thread_max_bytes = thread_max_bytes
        self.store_max_bytes = store_max_bytes
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._used_bytes: int | None = None  # measured on first write
        self._measured_at = 0.0

    def not_writable_reason(self) -> str | None:
        """None when a thread file can be written now, else why not."""
        try:
            self.threads_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.threads_dir):
                pass
        except OSError as exc:
            return f"data dir {self.data_dir} is not writable: {exc.strerror or exc}"
        return None

    async def turns(self, thread_id: str) -> list[Turn]:
        """The conversation so far (bounded by the thread cap), oldest first."""
        return await asyncio.to_thread(
            lambda: [Turn(m.role, m.content) for m in self.messages(thread_id)]
        )

    def exists(self, thread_id: str) -> bool:
        return self._path(thread_id).exists() or self._legacy_path(thread_id).exists()

    def messages(self, thread_id: str) -> Iterator[StoredMessage]:
        """The thread's messages one by one, read as they are needed."""
        legacy = self._legacy_path(thread_id)
        if legacy.exists() and not self._path(thread_id).exists():
            yield from Thread.model_validate_json(legacy.read_bytes()).messages
            return
        try:
            handle = self._path(thread_id).open("rb")
        except FileNotFoundError:
            return
        with handle:
            for line in handle:
                message = _parse(line)
                if message is not None:
                    yield message

    def thread_json(self, thread_id: str) -> Iterator[bytes]:
        """The thread as one JSON document, written piece by piece (never whole in memory)."""
        first = last = None
        for message in self.messages(thread_id):  # a first pass for the two times
            first = first if first is not None else message.ts
            last = message.ts
        head = {"threadId": thread_id, "createdAt": first or 0, "updatedAt": last or 0}
        yield json.dumps(head)[:-1].encode() + b', "messages": ['
        for index, message in enumerate(self.messages(thread_id)):
            yield (b"," if index else b"") + message.model_dump_json().encode()
        yield b"]}"

    async def append(self, thread_id: str, *messages: StoredMessage, capped: bool = True) -> None:
        """Add messages to a thread (created on first use); serialized per thread.

        ``capped`` refuses messages past a cap (StoreFullError); a reply to a
        message already accepted is stored regardless (it is bounded by the model).
        """
        lock = self._locks.get(thread_id)
        if lock is None:
            lock = self._locks[thread_id] = asyncio.Lock()
        async with lock:
            await asyncio.to_thread(self._append, thread_id, messages, capped)

    def _path(self, thread_id: str) -> Path:
        if not is_thread_id(thread_id):
            raise ValueError(f"invalid thread id {thread_id!r}")
        return self.threads_dir / f"{thread_id}{SUFFIX}"

    def _legacy_path(self, thread_id: str) -> Path:
        return self._path(thread_id).with_suffix(LEGACY_SUFFIX)

    def _append(self, thread_id: str, messages: tuple[StoredMessage, ...], capped: bool) -> None:
        path = self._path(thread_id)
        self._convert_legacy(thread_id)
        data = b"".join(m.line() for m in messages)
        if capped:  # before creating the file: a refused message leaves no empty thread behind
            self._check_room(path.stat().st_size if path.exists() else 0, len(data))
        path.parent.mkdir(parents=True, exist_ok=True)
        created = not path.exists()
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            # Every API process and the worker append to this file: under the lock, the cap is
            # checked on the size the write lands on (the first check raced with the others).
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.fstat(fd).st_size
            if capped:
                self._check_room(size, len(data))
            if size and os.pread(fd, 1, size - 1) != b"\n":  # a torn line: end it, keep ours whole
                data = b"\n" + data
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            _fsync_dir(path.parent)
        self._used_bytes = self.used_bytes() + len(data)

    def used_bytes(self) -> int:
        """Bytes of every thread file, measured, then counted as they are written.

        Measured again every USED_BYTES_FRESH_S: the API processes and the worker each count
        only their own writes.
        """
        if self._used_bytes is None or time.monotonic() - self._measured_at > USED_BYTES_FRESH_S:
            self._measured_at = time.monotonic()
            self._used_bytes = sum(
                p.stat().st_size for p in self.threads_dir.glob("*") if p.is_file()
            ) if self.threads_dir.is_dir() else 0
        return self._used_bytes

    def _check_room(self, current: int, size: int) -> None:
        if current + size > self.thread_max_bytes:
            raise StoreFullError(413, "this thread is full; start a new one")
        if self.used_bytes() + size > self.store_max_bytes:
            raise StoreFullError(507, "the chat store is full")

    def _convert_legacy(self, thread_id: str) -> None:
        """Rewrite a whole-document thread as JSON lines once, atomically."""
        legacy = self._legacy_path(thread_id)
        if not legacy.exists():
            return
        path = self._path(thread_id)
        data = b"".join(m.line() for m in Thread.model_validate_json(legacy.read_bytes()).messages)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        legacy.unlink()
        _fsync_dir(path.parent)
        self._used_bytes = None


def _parse(line: bytes) -> StoredMessage | None:
    """One stored message, or None for a torn last line (a crash mid-append)."""
    try:
        return StoredMessage.model_validate_json(line)
    except ValidationError:
        log.warning("skipping an unreadable line in a thread file")
        return None


def _fsync_dir(directory: Path) -> None:
    """Make the new file's directory entry durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
