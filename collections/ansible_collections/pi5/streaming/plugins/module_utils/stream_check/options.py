"""Every option of the check, declared once: the one table both faces are built from.

Each option is a field of :class:`Request` (how to fetch) or :class:`Criteria`
(what counts as incremental), declared with :func:`option`: its Python type and
default, its Ansible type, its description and its command-line flags. From
these fields (:data:`OPTIONS`):

- the Ansible module's argument spec (:func:`argument_spec`) and its
  DOCUMENTATION (``scripts/module_docs.py`` writes it into the module file;
  ``make lint`` fails when it drifts),
- the CLI's parser and ``--help`` (``cli.py``),
- plain data to options (:func:`options_from_mapping`, :func:`hop_from_mapping`:
  the module's parameters, ``--hops-file``).

Descriptions use Ansible's markup (``O(option)``, ``V(value)``, ``C(code)``);
the CLI turns it into plain text and ``O(max_time)`` into ``--max-time``.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit

__all__ = [
    "CRITERIA_FIELDS",
    "FACE_OPTIONS",
    "HTTP_VERSIONS",
    "OPTIONS",
    "OPTION_DEFAULTS",
    "REQUEST_FIELDS",
    "Criteria",
    "CurlMissing",
    "Hop",
    "Option",
    "Request",
    "StreamCheckError",
    "UsageError",
    "argument_spec",
    "hop_from_mapping",
    "options_from_mapping",
    "split_header",
]

HTTP_VERSIONS: Final = ("auto", "1.1", "2")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_RESOLVE = re.compile(r"^\+?(\[[0-9A-Fa-f:.]+\]|[^:\s\[\]]+|\*):\d{1,5}:\S+$")
_METHOD = re.compile(r"^[A-Z]+$")


class StreamCheckError(Exception):
    """The check could not run at all (as opposed to a failed verdict)."""


class UsageError(StreamCheckError, ValueError):
    """An option has an invalid value; the message names it."""


class CurlMissing(StreamCheckError):  # noqa: N818  (a condition, like FileNotFoundError's cousins)
    """The curl executable was not found."""


@dataclass(frozen=True)
class Option:
    """One option as every face sees it."""

    name: str
    type: str  # the Ansible type: str, bool, int, float, path, list, dict, raw
    default: object
    description: tuple[str, ...]  # paragraphs, Ansible markup
    scope: str  # "request", "criteria" or "face" (the faces' own, not the core's)
    elements: str | None = None
    choices: tuple[str, ...] | None = None
    aliases: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()  # CLI flags; () means --name-with-dashes
    metavar: str | None = None
    module_name: str | None = None  # the module's name for it, when not ``name``
    per_hop: bool = True  # a hop may override it
    required: bool = False

    @property
    def ansible_name(self) -> str:
        return self.module_name or self.name

    @property
    def cli_flags(self) -> tuple[str, ...]:
        return self.flags or ("--" + self.name.replace("_", "-"),)


T = TypeVar("T")


def option(
    default: T,
    ansible_type: str,
    *description: str,
    elements: str | None = None,
    choices: tuple[str, ...] | None = None,
    aliases: tuple[str, ...] = (),
    flags: tuple[str, ...] = (),
    metavar: str | None = None,
    module_name: str | None = None,
    per_hop: bool = True,
) -> T:
    """A dataclass field that also carries the option's documentation and flags."""
    spec = {
        "type": ansible_type,
        "description": description,
        "elements": elements,
        "choices": choices,
        "aliases": aliases,
        "flags": flags,
        "metavar": metavar,
        "module_name": module_name,
        "per_hop": per_hop,
    }
    found: T = dataclasses.field(default=default, metadata={"option": spec})
    return found


def split_header(line: str) -> tuple[str, str]:
    """``"Name: value"`` -> ``("Name", "value")``; raise UsageError if malformed."""
    name, sep, value = line.partition(":")
    name, value = name.strip(), value.strip()
    if not sep or not _HEADER_NAME.match(name) or "\r" in value or "\n" in value:
        raise UsageError(f"header must look like 'Name: value', got {line!r}")
    return name, value


@dataclass(frozen=True)
class Request:
    """How to fetch the stream: the curl side of the check."""

    url: str
    method: str | None = option(
        None, "str", "HTTP method. Defaults to V(GET), or V(POST) when O(data) is given.", flags=("-X", "--method")
    )
    data: str | None = option(
        None,
        "raw",
        "Request body, sent with C(Content-Type: application/json). A dict or list is serialised to JSON.",
        flags=("-d", "--data"),
        metavar="JSON",
    )
    headers: tuple[str, ...] = option(
        (),
        "dict",
        "Extra request headers. A header named like a default (C(Accept), C(Accept-Encoding), C(Cache-Control), "
        "C(Content-Type)) replaces that default. On the command line, C(-H 'Name: value'), repeatable.",
        flags=("-H", "--header"),
        metavar="'NAME: VALUE'",
    )
    insecure: bool = option(False, "bool", "Skip TLS certificate verification (curl C(-k)).", flags=("-k", "--insecure"))
    cacert: str | None = option(None, "path", "CA bundle to verify the server certificate with.", metavar="FILE")
    resolve: tuple[str, ...] = option(
        (),
        "list",
        "curl C(--resolve HOST:PORT:ADDRESS) entries, to test a TLS server name against a local address.",
        elements="str",
        metavar="HOST:PORT:ADDR",
    )
    http_version: str = option(
        "auto",
        "str",
        "V(1.1) forces HTTP/1.1, V(2) asks for HTTP/2. V(auto) checks every protocol the server offers: over "
        "https, HTTP/2 and HTTP/1.1 (each on its own fresh connection, at the same time), and fails naming the "
        "protocol that does not stream; a CDN or tunnel reaches an origin over HTTP/1.1 even when browsers use "
        "HTTP/2. Over http, HTTP/1.1 (browsers never use cleartext HTTP/2).",
        choices=HTTP_VERSIONS,
        flags=("--http-version",),
        metavar="{auto,1.1,2}",
    )
    max_time: float = option(
        10.0, "float", "Seconds the whole stream may take (curl C(--max-time)).", aliases=("timeout_s",), metavar="S"
    )
    connect_timeout: float = option(5.0, "float", "Seconds to establish the connection.", metavar="S")
    watch: float | None = option(
        None,
        "float",
        "Watch an endless feed (no done event) for this many seconds and judge what arrived in that window: "
        "the end of the window is the normal end, not a timeout, and no done event is expected.",
        metavar="SECONDS",
    )
    curl: str = option(
        "curl", "str", "The curl executable.", module_name="curl_path", flags=("--curl",), metavar="PATH", per_hop=False
    )

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(f"url must be an http:// or https:// URL with a host, got {self.url!r}")
        if self.method is not None and not _METHOD.match(self.method):
            raise UsageError(f"method must be an upper-case HTTP method, got {self.method!r}")
        for header in self.headers:
            split_header(header)
        for entry in self.resolve:
            if not _RESOLVE.match(entry):
                raise UsageError(f"resolve must look like HOST:PORT:ADDRESS, got {entry!r}")
        if self.http_version not in HTTP_VERSIONS:
            raise UsageError(f"http_version must be one of {', '.join(HTTP_VERSIONS)}, got {self.http_version!r}")
        if not self.max_time > 0 or not self.connect_timeout > 0:
            raise UsageError("max_time and connect_timeout must be positive seconds")
        if self.watch is not None and not self.watch > 0:
            raise UsageError("watch must be positive seconds")

    @property
    def effective_method(self) -> str:
        return self.method or ("POST" if self.data is not None else "GET")

    @property
    def deadline_s(self) -> float:
        """curl's --max-time: the watch window when watching, else max_time."""
        return self.watch if self.watch is not None else self.max_time


@dataclass(frozen=True)
class Criteria:
    """What counts as incremental delivery: the judging side of the check."""

    min_events: int = option(
        5, "int", "Fewest events (the done event and heartbeats not counted) needed to prove incremental delivery.",
        metavar="N",
    )
    expect_done: bool = option(
        True,
        "bool",
        "Require a terminating done event (C(event: done), C(data: [DONE]), a JSON C(type) of V(done) or "
        "V(message_stop)). Set to V(false) for endpoints without one; then a clean end of the response is enough.",
    )
    min_span_ratio: float = option(
        0.5,
        "float",
        "When events carry emission times, the events must arrive spread over at least this share of the span "
        "they were emitted over.",
        metavar="R",
    )
    max_burst_share: float = option(
        0.5, "float", "Largest share of all events allowed to arrive within O(burst_window_ms) of each other.",
        metavar="R",
    )
    burst_window_ms: float = option(10.0, "float", "Events arriving this close together count as one burst.", metavar="MS")
    min_delivery_ratio: float = option(
        0.5,
        "float",
        "Smallest share of events that must arrive in a delivery of their own. An event emitted more than "
        "O(burst_window_ms) after the previous one but arriving within O(burst_window_ms) of it was held back and "
        "shares a delivery. Catches a stream released in a few large bunches.",
        metavar="R",
    )
    max_lateness_ms: float = option(
        1000.0,
        "float",
        "Largest lateness allowed for any event, measured against its emission time relative to the "
        "least-delayed event.",
        metavar="MS",
    )
    expect_heartbeats: bool = option(
        False,
        "bool",
        "Require C(:) comment heartbeats. The stream must pause longer than O(heartbeat_interval_ms) at least "
        "once, and no silence (counted from the request, so a server that holds even its headers is caught) may "
        "exceed 1.5 times the interval.",
    )
    heartbeat_interval_ms: float = option(
        15000.0, "float", "The interval the server sends heartbeat comments at when idle.", metavar="MS"
    )
    expect_header: str | None = option(
        None,
        "str",
        "A response header the answer must carry, as C(Name: value), for example C(X-Config-Revision: 3f2a9c). "
        "Proves that the config that answers is the one just deployed; a missing or different value gives the "
        "verdict V(stale_config).",
        metavar="'NAME: VALUE'",
    )
    resume: bool = option(
        False,
        "bool",
        "After the stream check passes, the resume hop: stream the same URL again, cut the connection (curl "
        "stops) once half the tokens the check counted have arrived, and reconnect to the reply's URL that the "
        "response's C(Content-Location) header names, with C(Last-Event-ID) set to the last C(id) received and "
        "the same headers, CA, O(resolve) and HTTP version (a GET without a body). Passes only if the resumed "
        "response is a C(200) C(text/event-stream) that ends with a done event, every event of both connections "
        "carries an integer C(id) one above the previous one (the first after the cut is the last one before it "
        "plus one: nothing missing, nothing twice), and the joined token text matches the done event's "
        "C(tokens), C(bytes) and C(sha256). Otherwise the verdict is V(not_resumable), naming what broke: no "
        "C(Content-Location), a replay from the start (ids twice), skipped ids, a different text, or an "
        "C(expired) reply. A C(Content-Location) on another origin is not followed (the request's credentials "
        "would go with it). Needs a done event, so not with O(watch) or O(expect_done=false).",
    )

    def __post_init__(self) -> None:
        if self.min_events < 1:
            raise UsageError("min_events must be at least 1")
        for name in ("min_span_ratio", "max_burst_share", "min_delivery_ratio"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise UsageError(f"{name} must be between 0 and 1")
        for name in ("burst_window_ms", "max_lateness_ms", "heartbeat_interval_ms"):
            if not getattr(self, name) > 0:
                raise UsageError(f"{name} must be positive")
        if self.expect_header is not None:
            split_header(self.expect_header)

    @property
    def expected_header(self) -> tuple[str, str] | None:
        return None if self.expect_header is None else split_header(self.expect_header)


DEFAULT_CRITERIA: Final = Criteria()


@dataclass(frozen=True)
class Hop:
    """One point on the path to the browser (backend, nginx, a tunnel...).

    ``position`` groups the hops that check one point over different protocols
    (the same URL over HTTP/2 and HTTP/1.1): they are siblings, not upstream of
    each other, when the fault is attributed.
    """

    name: str
    request: Request
    criteria: Criteria = DEFAULT_CRITERIA
    position: str | None = None

    def __post_init__(self) -> None:
        if self.criteria.resume and (self.request.watch is not None or not self.criteria.expect_done):
            raise UsageError("resume needs a stream that ends with a done event: not with watch or expect_done false")

    @property
    def place(self) -> str:
        return self.position or self.name


def _field_options(cls: type[Request] | type[Criteria], scope: str) -> list[Option]:
    found = []
    for field in dataclasses.fields(cls):
        spec = field.metadata.get("option")
        if spec is not None:
            found.append(Option(name=field.name, default=field.default, scope=scope, **spec))
    return found


# The faces' own options: how many URLs, how to report. Not part of a Request or Criteria.
FACE_OPTIONS: Final[tuple[Option, ...]] = (
    Option(
        "url", "str", None, ("The SSE endpoint to check. Mutually exclusive with O(hops).",), "face", per_hop=False
    ),
    Option(
        "name",
        "str",
        None,
        (
            "Label for the checked endpoint in the diagnosis (for example V(nginx)). Defaults to the proxy the "
            "response's headers name (V(nginx), V(Caddy), V(Cloudflare)...), else V(the server).",
        ),
        "face",
        per_hop=False,
    ),
    Option(
        "stop_on_failure",
        "bool",
        False,
        (
            "With O(hops), check the hops one after another and stop after the first hop that fails, instead of "
            "checking every hop at the same time.",
        ),
        "face",
        per_hop=False,
    ),
)

OPTIONS: Final[tuple[Option, ...]] = (*_field_options(Request, "request"), *_field_options(Criteria, "criteria"))
REQUEST_FIELDS: Final = tuple(f.name for f in dataclasses.fields(Request))
CRITERIA_FIELDS: Final = tuple(f.name for f in dataclasses.fields(Criteria))
# Every option's default, for the faces (module argument spec, CLI) to share.
OPTION_DEFAULTS: Final[Mapping[str, object]] = {opt.name: opt.default for opt in OPTIONS}
_BY_KEY: Final[Mapping[str, Option]] = {
    key: opt for opt in OPTIONS for key in (opt.name, opt.ansible_name, *opt.aliases)
}


# --------------------------------------------------------------------------
# The module's argument spec
# --------------------------------------------------------------------------


def _spec(opt: Option, *, with_default: bool) -> dict[str, Any]:
    spec: dict[str, Any] = {"type": opt.type}
    if opt.elements:
        spec["elements"] = opt.elements
    if opt.choices:
        spec["choices"] = list(opt.choices)
    if opt.aliases and with_default:
        spec["aliases"] = list(opt.aliases)
    if with_default and opt.default is not None:
        spec["default"] = {"list": [], "dict": {}}.get(opt.type, opt.default) if opt.default == () else opt.default
    return spec


def argument_spec() -> dict[str, dict[str, Any]]:
    """The module's argument spec: top-level options carry the defaults; hop suboptions have none, so unset
    ones inherit the top level."""
    hop_options: dict[str, dict[str, Any]] = {
        "name": {"type": "str", "required": True},
        "url": {"type": "str", "required": True},
        **{opt.ansible_name: _spec(opt, with_default=False) for opt in OPTIONS if opt.per_hop},
    }
    return {
        "url": {"type": "str"},
        "name": {"type": "str"},
        "hops": {"type": "list", "elements": "dict", "options": hop_options},
        "stop_on_failure": {"type": "bool", "default": False},
        **{opt.ansible_name: _spec(opt, with_default=True) for opt in OPTIONS},
    }


# --------------------------------------------------------------------------
# Options from plain data (the Ansible module, --hops-file)
# --------------------------------------------------------------------------


def _coerce(opt: Option, value: object) -> Any:  # Any: checked here, then typed by the dataclass
    kind, key = opt.type, opt.name
    if kind == "bool" and isinstance(value, bool):
        return value
    if kind == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind in ("str", "path") and opt.choices and isinstance(value, (int, float)) and not isinstance(value, bool):
        return "2" if str(value) == "2.0" else str(value)  # http_version: 2 or 1.1 given as numbers
    if kind in ("str", "path") and isinstance(value, str):
        return value
    if kind == "raw":
        return value if isinstance(value, str) else json.dumps(value)
    if kind == "list" and isinstance(value, str):
        return (value,)
    if kind in ("list", "dict") and isinstance(value, (list, tuple)):
        return tuple(str(item) for item in value)
    if kind == "dict" and isinstance(value, Mapping):
        return tuple(f"{name}: {item}" for name, item in value.items())
    raise UsageError(f"{key} has the wrong type ({type(value).__name__}) for a {kind}")


def options_from_mapping(options: Mapping[str, object]) -> tuple[Request, Criteria]:
    """Request and Criteria from plain data (None means "the default"); keys are option names, the module's
    names or aliases."""
    unknown = sorted(key for key in options if key != "url" and key not in _BY_KEY)
    if unknown:
        raise UsageError(f"unknown option(s): {', '.join(unknown)}")
    if not isinstance(options.get("url"), str):
        raise UsageError("url is required")
    given: dict[str, Any] = {"url": options["url"]}
    for key, value in options.items():
        if key != "url" and value is not None:
            opt = _BY_KEY[key]
            given[opt.name] = _coerce(opt, value)
    request = Request(**{key: value for key, value in given.items() if key in REQUEST_FIELDS})
    criteria = Criteria(**{key: value for key, value in given.items() if key in CRITERIA_FIELDS})
    return request, criteria


def hop_from_mapping(hop: Mapping[str, object], defaults: Mapping[str, object] | None = None) -> Hop:
    """A Hop from ``{"name", "url", <any option>}``; unset options come from ``defaults``."""
    name = hop.get("name")
    if not isinstance(name, str) or not name:
        raise UsageError(f"every hop needs a name, got {dict(hop)!r}")
    if not isinstance(hop.get("url"), str):
        raise UsageError(f"hop {name} needs a url")
    own = {key: value for key, value in hop.items() if key != "name" and value is not None}
    request, criteria = options_from_mapping({**(defaults or {}), **own})
    return Hop(name, request, criteria)
