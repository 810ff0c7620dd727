"""From curl's timed reads to timed events: undo the Content-Encoding, parse text/event-stream.

Pure functions of their input. Every event keeps the arrival of the read that
carried its terminating blank line (after decoding, when the body was compressed).
"""

from __future__ import annotations

import codecs
import re
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ansible_collections.pi5.streaming.plugins.module_utils.stream_check.curl import Chunk, brotli_decompressor

__all__ = ["SseComment", "SseEvent", "SseParser", "SseStream", "decode_body", "parse_sse"]

_EOL = re.compile(r"\r\n|\r|\n")


def decode_body(chunks: Sequence[Chunk], encoding: str | None) -> tuple[list[Chunk], str | None]:
    """Undo a gzip/deflate/br Content-Encoding chunk by chunk, keeping arrival stamps.

    Each chunk is decoded as it arrived, so an event is timed by the read whose
    decoded bytes completed it. Returns the decoded chunks and an error text
    (None when decoding worked).
    """
    if encoding in (None, "", "identity"):
        return list(chunks), None
    if encoding == "br":
        return _decode_brotli(chunks)
    if encoding not in ("gzip", "x-gzip", "deflate"):
        return [], f"cannot decode Content-Encoding {encoding} (it was not asked for)"
    # 32+15 accepts a gzip or zlib header; raw deflate ("deflate" done wrong) needs -15.
    for wbits in (47, -15):
        decoder = zlib.decompressobj(wbits)
        try:
            decoded = [Chunk(chunk.at, decoder.decompress(chunk.data)) for chunk in chunks]
        except zlib.error:
            continue
        return decoded, None
    return [], f"the {encoding} body does not decode"


def _decode_brotli(chunks: Sequence[Chunk]) -> tuple[list[Chunk], str | None]:
    decoder = brotli_decompressor()
    if decoder is None:
        return [], "cannot decode Content-Encoding br: no brotli module in this Python (and br was not asked for)"
    try:
        return [Chunk(chunk.at, bytes(decoder.process(chunk.data))) for chunk in chunks], None
    except Exception as exc:
        return [], f"the br body does not decode ({exc})"


@dataclass(frozen=True)
class SseEvent:
    """A dispatched event, stamped with the read carrying its blank line."""

    at: float
    data: str
    type: str = "message"
    id: str | None = None  # the last event ID a browser would send: an event without an id: line keeps the last one
    own_id: bool = False  # this event carried an id: line of its own


@dataclass(frozen=True)
class SseComment:
    """A ``:`` comment line (heartbeat or open marker) and its arrival."""

    at: float
    text: str


@dataclass(frozen=True)
class SseStream:
    events: tuple[SseEvent, ...]
    comments: tuple[SseComment, ...]
    incomplete_tail: bool  # bytes after the last blank line: cut mid-event


class SseParser:
    """Incremental text/event-stream parser (the WHATWG algorithm).

    Lines end in CRLF, LF or CR, also when a CRLF is split across reads; UTF-8
    is decoded incrementally so a character split across reads survives.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8-sig")(errors="replace")
        self._pending = ""
        self._skip_lf = False
        self._data: list[str] = []
        self._type = ""
        self._last_id: str | None = None
        self._own_id = False
        self.events: list[SseEvent] = []
        self.comments: list[SseComment] = []

    def feed(self, data: bytes, at: float) -> None:
        self._feed_text(self._decoder.decode(data), at)

    def close(self, at: float) -> SseStream:
        self._feed_text(self._decoder.decode(b"", final=True), at)
        # The spec discards an event that is not terminated by a blank line.
        tail = bool(self._pending or self._data)
        return SseStream(tuple(self.events), tuple(self.comments), tail)

    def _feed_text(self, text: str, at: float) -> None:
        if not text:
            return
        if self._skip_lf and text.startswith("\n"):
            text = text[1:]
        self._skip_lf = False
        buffer = self._pending + text
        position = 0
        for match in _EOL.finditer(buffer):
            self._line(buffer[position : match.start()], at)
            position = match.end()
        # A CR at the very end may be the first half of a CRLF split across reads.
        self._skip_lf = buffer.endswith("\r")
        self._pending = buffer[position:]

    def _line(self, line: str, at: float) -> None:
        if not line:
            self._dispatch(at)
        elif line.startswith(":"):
            self.comments.append(SseComment(at, line[1:].strip()))
        else:
            name, sep, value = line.partition(":")
            if sep and value.startswith(" "):
                value = value[1:]
            if name == "data":
                self._data.append(value)
            elif name == "event":
                self._type = value
            elif name == "id" and "\0" not in value:
                self._last_id = value
                self._own_id = True

    def _dispatch(self, at: float) -> None:
        if self._data:
            self.events.append(
                SseEvent(at, "\n".join(self._data), self._type or "message", self._last_id, self._own_id)
            )
        self._data = []
        self._type = ""
        self._own_id = False


def parse_sse(chunks: Iterable[Chunk]) -> SseStream:
    """Parse timed chunks into events and comments, each with its arrival."""
    parser = SseParser()
    at = 0.0
    for chunk in chunks:
        parser.feed(chunk.data, chunk.at)
        at = chunk.at
    return parser.close(at)
