"""Chat threads persisted as one JSON file each under <data_dir>/threads/.

Plain files keep backup and restore of the data volume trivial (copy the
directory). Writes go to a temporary file that is fsynced and renamed over
the old one, so a crash or power cut leaves either the old or the new thread.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import tempfile
import uuid
import weakref
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .providers import Turn
from .sse import now_ms

THREAD_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
_THREAD_ID = re.compile(THREAD_ID_PATTERN)


class StoredMessage(BaseModel):
    role: Literal["user", "assistant"]
    content: str
    ts: int = Field(description="Milliseconds since the Unix epoch.")
    status: Literal["complete", "error", "interrupted"] = "complete"
    error: str | None = None


class Thread(BaseModel):
    """A thread as stored and served (camelCase on the wire and on disk)."""

    model_config = ConfigDict(validate_by_name=True, serialize_by_alias=True)

    thread_id: str = Field(alias="threadId")
    created_at: int = Field(alias="createdAt", description="Milliseconds since the Unix epoch.")
    updated_at: int = Field(alias="updatedAt", description="Milliseconds since the Unix epoch.")
    messages: list[StoredMessage] = []

    def turns(self) -> list[Turn]:
        return [Turn(m.role, m.content) for m in self.messages]


def new_thread_id() -> str:
    return uuid.uuid4().hex


def is_thread_id(value: str) -> bool:
    return _THREAD_ID.fullmatch(value) is not None


class ThreadStore:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.threads_dir = data_dir / "threads"
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    def not_writable_reason(self) -> str | None:
        """None when a thread file can be written now, else why not."""
        try:
            self.threads_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.threads_dir):
                pass
        except OSError as exc:
            return f"data dir {self.data_dir} is not writable: {exc.strerror or exc}"
        return None

    async def load(self, thread_id: str) -> Thread | None:
        return await asyncio.to_thread(self._read, thread_id)

    async def append(self, thread_id: str, *messages: StoredMessage) -> Thread:
        """Add messages to a thread (created on first use); serialized per thread."""
        lock = self._locks.get(thread_id)
        if lock is None:
            lock = self._locks[thread_id] = asyncio.Lock()
        async with lock:
            return await asyncio.to_thread(self._append, thread_id, messages)

    def _path(self, thread_id: str) -> Path:
        if not is_thread_id(thread_id):
            raise ValueError(f"invalid thread id {thread_id!r}")
        return self.threads_dir / f"{thread_id}.json"

    def _read(self, thread_id: str) -> Thread | None:
        try:
            raw = self._path(thread_id).read_bytes()
        except FileNotFoundError:
            return None
        return Thread.model_validate_json(raw)

    def _append(self, thread_id: str, messages: tuple[StoredMessage, ...]) -> Thread:
        now = now_ms()
        thread = self._read(thread_id) or Thread(threadId=thread_id, createdAt=now, updatedAt=now)
        thread.messages.extend(messages)
        thread.updated_at = now
        self._write(thread)
        return thread

    def _write(self, thread: Thread) -> None:
        path = self._path(thread.thread_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps(thread.model_dump(by_alias=True), ensure_ascii=False, indent=1).encode()
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
        _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
