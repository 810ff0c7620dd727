"""Prove that an HTTP endpoint delivers Server-Sent Events incrementally.

The one core behind the ``pi5.streaming.stream_check`` Ansible module, the
``bin/stream-check`` CLI, the bench and the tests, imported everywhere as
``ansible_collections.pi5.streaming.plugins.module_utils.stream_check``.
Standard library only (no Ansible imports): it runs on the Pi's system python3.

Modules by concern; every step but fetching is a pure function of its input::

    options   the one table of options (Request, Criteria), the module's argument spec
    curl      fetch: curl -N in a subprocess; each read of its stdout stamped with time.monotonic()
    parse     undo gzip/deflate/br per read, WHATWG event-stream parsing
    events    what the events mean: tokens, done, heartbeats, emission times in any unit
    measure   bursts, deliveries, span, lateness, silences
    proxies   which proxy or CDN answered (headers), and its documented fix
    judge     every criterion as a finding, worded for that proxy
    verdict   analyse(Capture, Criteria) -> CheckResult; check_stream = fetch + analyse
    resume    the resume hop: cut a stream halfway, reconnect with Last-Event-ID, join the parts
    hops      every hop and protocol at once, the first bad hop blamed; then the resume hops
    report    the tables people read
    cli       bin/stream-check
"""

from __future__ import annotations

from ansible_collections.pi5.streaming.plugins.module_utils.stream_check.curl import (
    Capture,
    Chunk,
    accepted_encodings,
    build_curl_argv,
    fetch,
    parse_header_dump,
    parse_writeout,
    request_headers,
)
from ansible_collections.pi5.streaming.plugins.module_utils.stream_check.events import (
    Reading,
    Stamps,
    check_integrity,
    read_events,
    read_timestamps,
)
from ansible_collections.pi5.streaming.plugins.module_utils.stream_check.hops import (
    HopsResult,
    attribute,
    check,
    check_hops,
    expand_protocols,
    fold_resume,
)
from ansible_collections.pi5.streaming.plugins.module_utils.stream_check.judge import VERDICTS, Verdict
from ansible_collections.pi5.streaming.plugins.module_utils.stream_check.measure import (
    delivery_groups,
    largest_burst,
    relative_lateness,
    silences,
)
from ansible_collections.pi5.streaming.plugins.module_utils.stream_check.options import (
    CRITERIA_FIELDS,
    OPTION_DEFAULTS,
    OPTIONS,
    REQUEST_FIELDS,
    Criteria,
    CurlMissing,
    Hop,
    Option,
    Request,
    StreamCheckError,
    UsageError,
    argument_spec,
    hop_from_mapping,
    options_from_mapping,
)
from ansible_collections.pi5.streaming.plugins.module_utils.stream_check.parse import (
    SseComment,
    SseEvent,
    SseParser,
    SseStream,
    decode_body,
    parse_sse,
)
from ansible_collections.pi5.streaming.plugins.module_utils.stream_check.proxies import PROXIES, fingerprint
from ansible_collections.pi5.streaming.plugins.module_utils.stream_check.report import (
    render,
    render_hops_table,
    render_table,
)
from ansible_collections.pi5.streaming.plugins.module_utils.stream_check.resume import (
    ResumeResult,
    check_resume,
    judge_cut,
    judge_resume,
    resume_request,
)
from ansible_collections.pi5.streaming.plugins.module_utils.stream_check.verdict import (
    CheckResult,
    analyse,
    check_stream,
)

__all__ = [
    "CRITERIA_FIELDS",
    "OPTIONS",
    "OPTION_DEFAULTS",
    "PROXIES",
    "REQUEST_FIELDS",
    "VERDICTS",
    "Capture",
    "CheckResult",
    "Chunk",
    "Criteria",
    "CurlMissing",
    "Hop",
    "HopsResult",
    "Option",
    "Reading",
    "Request",
    "ResumeResult",
    "SseComment",
    "SseEvent",
    "SseParser",
    "SseStream",
    "Stamps",
    "StreamCheckError",
    "UsageError",
    "Verdict",
    "accepted_encodings",
    "analyse",
    "argument_spec",
    "attribute",
    "build_curl_argv",
    "check",
    "check_hops",
    "check_integrity",
    "check_resume",
    "check_stream",
    "decode_body",
    "delivery_groups",
    "expand_protocols",
    "fetch",
    "fingerprint",
    "fold_resume",
    "hop_from_mapping",
    "judge_cut",
    "judge_resume",
    "largest_burst",
    "options_from_mapping",
    "parse_header_dump",
    "parse_sse",
    "parse_writeout",
    "read_events",
    "read_timestamps",
    "relative_lateness",
    "render",
    "render_hops_table",
    "render_table",
    "request_headers",
    "resume_request",
    "silences",
]
