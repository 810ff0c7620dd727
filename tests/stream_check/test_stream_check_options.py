"""Request validation, the curl command line, and options from plain data."""

from __future__ import annotations

import pytest

from ansible_collections.pi5.streaming.plugins.module_utils.stream_check import (
    Criteria,
    Request,
    UsageError,
    accepted_encodings,
    build_curl_argv,
    hop_from_mapping,
    options_from_mapping,
    request_headers,
)

URL = "https://pi5.local/api/probe/stream?tokens=20&interval_ms=50"


def argv(**kwargs: object) -> list[str]:
    return build_curl_argv(Request(url=URL, **kwargs), "/tmp/headers")  # type: ignore[arg-type]


def values(args: list[str], flag: str) -> list[str]:
    return [args[i + 1] for i, arg in enumerate(args) if arg == flag]


class TestCurlArgv:
    def test_streams_like_a_browser_and_hides_nothing(self) -> None:
        args = argv()
        assert args[:2] == ["curl", "--disable"]  # ~/.curlrc could add --compressed or a proxy
        assert "--no-buffer" in args
        assert "--compressed" not in args  # it would decode gzip and hide a compressing proxy
        assert "--location" not in args and "-L" not in args
        assert values(args, "--header") == [
            "Accept: text/event-stream",
            f"Accept-Encoding: {accepted_encodings()}",
            "Cache-Control: no-cache",
        ]
        assert values(args, "--dump-header") == ["/tmp/headers"]
        assert values(args, "--noproxy") == ["*"]
        assert args[-2:] == ["--url", URL]
        assert "--request" not in args and "--http2" not in args and "--http1.1" not in args

    def test_write_out_goes_to_stderr_as_json(self) -> None:
        (write_out,) = values(argv(), "--write-out")
        assert write_out.startswith("%{stderr}") and write_out.endswith("%{json}\n")

    @pytest.mark.parametrize(("version", "flag"), [("1.1", "--http1.1"), ("2", "--http2")])
    def test_http_version(self, version: str, flag: str) -> None:
        assert flag in argv(http_version=version)

    def test_tls_options_pass_through(self) -> None:
        args = argv(insecure=True, cacert="/etc/ca.pem", resolve=("pi5.local:443:127.0.0.1", "x:80:[::1]"))
        assert "--insecure" in args
        assert values(args, "--cacert") == ["/etc/ca.pem"]
        assert values(args, "--resolve") == ["pi5.local:443:127.0.0.1", "x:80:[::1]"]

    def test_json_body(self) -> None:
        args = argv(data='@{"not": "a file"}')
        assert values(args, "--data-raw") == ['@{"not": "a file"}']  # --data-raw never reads a file
        assert "Content-Type: application/json" in values(args, "--header")
        assert "--request" not in args  # POST is implied

    def test_method_only_when_not_implied(self) -> None:
        assert values(argv(method="DELETE"), "--request") == ["DELETE"]
        assert values(argv(method="PUT", data="{}"), "--request") == ["PUT"]
        assert "--request" not in argv(method="GET")

    def test_timeouts(self) -> None:
        args = argv(max_time=2.5, connect_timeout=1)
        assert values(args, "--max-time") == ["2.5"] and values(args, "--connect-timeout") == ["1"]

    def test_user_header_replaces_a_default_of_the_same_name(self) -> None:
        request = Request(url=URL, headers=("accept-encoding: identity", "Authorization: Bearer x"))
        assert request_headers(request) == [
            "Accept: text/event-stream",
            "accept-encoding: identity",
            "Cache-Control: no-cache",
            "Authorization: Bearer x",
        ]


class TestValidation:
    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"url": "ftp://x/"}, "url must be an http"),
            ({"url": "http:///path"}, "url must be an http"),
            ({"url": URL, "method": "get me"}, "method"),
            ({"url": URL, "headers": ("no colon",)}, "header must look like"),
            ({"url": URL, "headers": ("X: a\r\nInjected: b",)}, "header must look like"),
            ({"url": URL, "resolve": ("pi5.local:443",)}, "resolve must look like"),
            ({"url": URL, "http_version": "3"}, "http_version"),
            ({"url": URL, "max_time": 0}, "positive"),
        ],
    )
    def test_bad_request(self, kwargs: dict[str, object], message: str) -> None:
        with pytest.raises(UsageError, match=message):
            Request(**kwargs)  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"min_events": 0}, "min_events"),
            ({"max_burst_share": 1.5}, "max_burst_share"),
            ({"burst_window_ms": 0}, "burst_window_ms"),
            ({"expect_header": "X-Config-Revision"}, "header must look like"),
        ],
    )
    def test_bad_criteria(self, kwargs: dict[str, object], message: str) -> None:
        with pytest.raises(UsageError, match=message):
            Criteria(**kwargs)  # type: ignore[arg-type]

    def test_expected_header_is_split(self) -> None:
        assert Criteria(expect_header="X-Config-Revision:  abc ").expected_header == ("X-Config-Revision", "abc")


class TestFromMapping:
    def test_types_are_coerced_and_none_means_default(self) -> None:
        request, criteria = options_from_mapping(
            {
                "url": URL,
                "headers": {"Authorization": "Bearer t"},
                "resolve": "pi5.local:443:127.0.0.1",
                "data": {"prompt": "hi"},
                "http_version": 2,
                "max_time": 15,
                "min_events": 10,
                "max_lateness_ms": None,
            }
        )
        assert request.headers == ("Authorization: Bearer t",)
        assert request.resolve == ("pi5.local:443:127.0.0.1",)
        assert request.data == '{"prompt": "hi"}'
        assert (request.http_version, request.max_time) == ("2", 15.0)
        assert (criteria.min_events, criteria.max_lateness_ms) == (10, 1000.0)

    @pytest.mark.parametrize(
        ("options", "message"),
        [
            ({"url": URL, "colour": "red"}, "unknown option"),
            ({"url": URL, "insecure": "yes"}, "insecure has the wrong type"),
            ({"url": URL, "min_events": 2.5}, "min_events has the wrong type"),
            ({}, "url is required"),
        ],
    )
    def test_bad_mapping(self, options: dict[str, object], message: str) -> None:
        with pytest.raises(UsageError, match=message):
            options_from_mapping(options)

    def test_hop_overrides_its_own_options_and_inherits_the_rest(self) -> None:
        defaults: dict[str, object] = {"max_time": 15, "insecure": False, "expect_header": None, "min_events": 8}
        hop = hop_from_mapping(
            {"name": "nginx", "url": URL, "insecure": True, "expect_header": "X-Config-Revision: r1", "max_time": None},
            defaults,
        )
        assert hop.name == "nginx"
        assert (hop.request.insecure, hop.request.max_time) == (True, 15.0)
        assert (hop.criteria.expect_header, hop.criteria.min_events) == ("X-Config-Revision: r1", 8)
        backend = hop_from_mapping({"name": "backend", "url": "http://127.0.0.1:7776/"}, defaults)
        assert backend.criteria.expect_header is None

    @pytest.mark.parametrize("hop", [{"url": URL}, {"name": "", "url": URL}, {"name": "nginx"}])
    def test_hop_needs_name_and_url(self, hop: dict[str, object]) -> None:
        with pytest.raises(UsageError):
            hop_from_mapping(hop)
