"""SSE parsing, body decoding and reading curl's output: pure functions, no I/O."""

from __future__ import annotations

import gzip
import json
import zlib

import pytest

from ansible_collections.pi5.streaming.plugins.module_utils.stream_check import (
    Chunk,
    SseParser,
    decode_body,
    parse_header_dump,
    parse_sse,
    parse_writeout,
)
from ansible_collections.pi5.streaming.plugins.module_utils.stream_check import curl as fetch_module
from ansible_collections.pi5.streaming.plugins.module_utils.stream_check import parse as parse_module


def chunks(*pieces: tuple[float, bytes]) -> list[Chunk]:
    return [Chunk(at, data) for at, data in pieces]


class TestSseParser:
    def test_event_is_stamped_with_the_read_that_carries_its_blank_line(self) -> None:
        stream = parse_sse(chunks((0.1, b"data: a\n"), (0.2, b"\n"), (0.3, b"data: b\n\n")))
        assert [(event.at, event.data) for event in stream.events] == [(0.2, "a"), (0.3, "b")]

    @pytest.mark.parametrize("eol", ["\n", "\r\n", "\r"])
    def test_every_line_ending(self, eol: str) -> None:
        body = f": hi{eol}event: tick{eol}id: 7{eol}data: one{eol}data: two{eol}{eol}".encode()
        stream = parse_sse(chunks((0.5, body)))
        assert [(e.type, e.id, e.data) for e in stream.events] == [("tick", "7", "one\ntwo")]
        assert [c.text for c in stream.comments] == ["hi"]

    def test_crlf_split_across_reads_is_one_line_ending(self) -> None:
        # A lone CR ends the line at once (no waiting); the LF after it in the next
        # read must not count as a blank line, which would dispatch "a" on its own.
        stream = parse_sse(chunks((0.1, b"data: a\r"), (0.2, b"\ndata: b\r"), (0.3, b"\n\r\n")))
        assert [(e.at, e.data) for e in stream.events] == [(0.3, "a\nb")]

    def test_multibyte_character_split_across_reads(self) -> None:
        data = "data: 🌍 é\n\n".encode()
        cut = data.index("🌍".encode()) + 2  # inside the 4-byte character
        stream = parse_sse(chunks((0.1, data[:cut]), (0.2, data[cut:])))
        assert [(e.at, e.data) for e in stream.events] == [(0.2, "🌍 é")]

    def test_every_byte_in_its_own_read(self) -> None:
        body = 'id: 1\r\ndata: {"content": "ü"}\r\n\r\n: keepalive\r\n\r\n'.encode()
        stream = parse_sse(Chunk(i / 1000, body[i : i + 1]) for i in range(len(body)))
        assert [e.data for e in stream.events] == ['{"content": "ü"}']
        assert [c.text for c in stream.comments] == ["keepalive"]

    def test_field_rules(self) -> None:
        body = b"data:no-space\ndata:  two-spaces\ndata\nretry: 3000\nunknown: x\n\n"
        (event,) = parse_sse(chunks((0.0, body))).events
        assert event.data == "no-space\n two-spaces\n"  # one leading space stripped; bare "data" is empty

    def test_blank_lines_without_data_dispatch_nothing(self) -> None:
        stream = parse_sse(chunks((0.0, b": open\n\nretry: 3000\n\nevent: x\n\n")))
        assert stream.events == ()
        assert [c.text for c in stream.comments] == ["open"]

    def test_event_type_resets_but_id_persists(self) -> None:
        stream = parse_sse(chunks((0.0, b"event: done\nid: 4\ndata: 1\n\ndata: 2\n\n")))
        assert [(e.type, e.id) for e in stream.events] == [("done", "4"), ("message", "4")]

    def test_leading_bom_is_dropped(self) -> None:
        stream = parse_sse(chunks((0.0, b"\xef\xbb\xbfdata: x\n\n")))
        assert [e.data for e in stream.events] == ["x"]

    def test_unterminated_event_is_discarded_and_reported(self) -> None:
        stream = parse_sse(chunks((0.0, b"data: whole\n\ndata: cut off")))
        assert [e.data for e in stream.events] == ["whole"]
        assert stream.incomplete_tail

    def test_comments_keep_their_arrival(self) -> None:
        stream = parse_sse(chunks((0.01, b": open\n\n"), (1.5, b": keepalive\n\n")))
        assert [(c.at, c.text) for c in stream.comments] == [(0.01, "open"), (1.5, "keepalive")]

    def test_invalid_utf8_is_replaced_not_fatal(self) -> None:
        parser = SseParser()
        parser.feed(b"data: \xff\n\n", 0.0)
        assert [e.data for e in parser.close(0.0).events] == ["\ufffd"]


class TestDecodeBody:
    def test_identity_passes_through(self) -> None:
        raw = chunks((0.1, b"data: a\n\n"))
        assert decode_body(raw, None) == (raw, None)

    def test_gzip_is_decoded_chunk_by_chunk_keeping_stamps(self) -> None:
        compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
        first = compressor.compress(b"data: a\n\n") + compressor.flush(zlib.Z_SYNC_FLUSH)
        second = compressor.compress(b"data: b\n\n") + compressor.flush()
        decoded, error = decode_body(chunks((0.1, first), (0.4, second)), "gzip")
        assert error is None
        assert [(e.at, e.data) for e in parse_sse(decoded).events] == [(0.1, "a"), (0.4, "b")]

    @pytest.mark.parametrize("compress", [zlib.compress, lambda data: zlib.compress(data)[2:-4]])
    def test_deflate_with_and_without_zlib_header(self, compress: object) -> None:
        assert callable(compress)
        decoded, error = decode_body(chunks((0.2, compress(b"data: z\n\n"))), "deflate")
        assert error is None
        assert [e.data for e in parse_sse(decoded).events] == ["z"]

    def test_brotli_is_decoded_chunk_by_chunk_keeping_stamps(self) -> None:
        brotli = pytest.importorskip("brotli")
        compressor = brotli.Compressor()
        first = compressor.process(b"data: a\n\n") + compressor.flush()
        second = compressor.process(b"data: b\n\n") + compressor.finish()
        decoded, error = decode_body(chunks((0.1, first), (0.4, second)), "br")
        assert error is None
        assert [(e.at, e.data) for e in parse_sse(decoded).events] == [(0.1, "a"), (0.4, "b")]

    def test_brotli_without_a_decoder_says_so_and_is_not_advertised(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(fetch_module, "brotli_decompressor", lambda: None)
        monkeypatch.setattr(parse_module, "brotli_decompressor", lambda: None)
        decoded, error = decode_body(chunks((0.1, b"\x0b\x02\x80")), "br")
        assert decoded == []
        assert error is not None and "no brotli module" in error
        assert fetch_module.accepted_encodings() == "gzip, deflate"

    def test_brotli_is_advertised_only_with_a_decoder(self) -> None:
        pytest.importorskip("brotli")
        assert fetch_module.accepted_encodings() == "gzip, deflate, br"

    def test_garbage_claiming_brotli(self) -> None:
        pytest.importorskip("brotli")
        _, error = decode_body(chunks((0.1, b"not brotli at all, not at all")), "br")
        assert error is not None and "does not decode" in error

    def test_garbage_claiming_gzip(self) -> None:
        _, error = decode_body(chunks((0.1, b"not gzip at all")), "gzip")
        assert error is not None and "does not decode" in error

    def test_whole_gzip_member(self) -> None:
        decoded, _ = decode_body(chunks((0.3, gzip.compress(b"data: q\n\n"))), "x-gzip")
        assert [e.data for e in parse_sse(decoded).events] == ["q"]


class TestCurlOutput:
    def test_last_response_of_a_header_dump_wins(self) -> None:
        dump = (
            "HTTP/1.1 100 Continue\r\n\r\n"
            "HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: text/event-stream\r\n"
            "Set-Cookie: a=1\r\nset-cookie: b=2\r\n\r\n"
        )
        status, version, headers = parse_header_dump(dump)
        assert (status, version) == (200, "1.1")
        assert headers == {"server": "nginx", "content-type": "text/event-stream", "set-cookie": "a=1, b=2"}

    def test_http2_header_dump(self) -> None:
        status, version, headers = parse_header_dump("HTTP/2 502 \r\ncontent-type: text/html\r\n\r\n")
        assert (status, version, headers) == (502, "2", {"content-type": "text/html"})

    def test_empty_dump(self) -> None:
        assert parse_header_dump("") == (None, None, {})

    def test_writeout_is_split_from_error_messages(self) -> None:
        writeout = {"response_code": 0, "exitcode": 7, "errormsg": "Failed to connect"}
        stderr = f"curl: (7) Failed to connect\n\n@@stream-check-writeout@@{json.dumps(writeout)}\n"
        data, messages = parse_writeout(stderr)
        assert data == writeout
        assert messages == "curl: (7) Failed to connect"

    def test_missing_or_broken_writeout(self) -> None:
        assert parse_writeout("curl: (2) failed init") == ({}, "curl: (2) failed init")
        assert parse_writeout("@@stream-check-writeout@@{not json\n")[0] == {}
