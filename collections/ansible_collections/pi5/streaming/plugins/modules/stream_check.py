"""Ansible module pi5.streaming.stream_check: a thin face over the stream check core."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: stream_check
short_description: Prove that an endpoint streams Server-Sent Events incrementally
version_added: "1.0.0"
description:
  - >-
    Fetches an SSE endpoint with C(curl -N) over a fresh connection, like a browser asks for it
    (C(Accept: text/event-stream), C(Cache-Control: no-cache), and C(Accept-Encoding) with every encoding it
    can decode: C(gzip, deflate), plus C(br) when a brotli module is installed), stamps every event with its
    arrival time and decides whether the events arrived incrementally. Over https it checks HTTP/2 and
    HTTP/1.1 unless O(http_version) picks one.
  - >-
    The verdict is C(incremental) only if the response is a C(200) C(text/event-stream) without
    Content-Encoding, at least O(min_events) events arrived, the stream ended cleanly, its events were
    spread over at least O(min_span_ratio) of the time they were emitted over, no burst held more than
    O(max_burst_share) of them, at least O(min_delivery_ratio) of them arrived separately and none was
    more than O(max_lateness_ms) late. Otherwise the module fails with a diagnosis naming the proxy or CDN
    that answered (from its headers: C(Server), C(Via), C(cf-ray), C(x-amzn-*)...) and the setting that
    fixes it, for example C(nginx delivers all 20 events in one burst after 2.0 s: nginx (named by Server:
    nginx/1.22.1): proxy_buffering off in the stream's location ...).
  - >-
    With O(hops), checks every hop of the path at the same time (for example the backend, then nginx,
    then a tunnel), each over its own connection, and attributes the fault to the first hop that breaks
    streaming (C(backend itself buffers), C(nginx buffers: backend streams incrementally, but ...)).
  - >-
    Lateness uses each event's emission time (C(ts), C(timestamp), C(time)... in its JSON: seconds,
    milliseconds, microseconds or nanoseconds, the unit read from the values themselves, or RFC 3339
    strings) relative to the least-delayed event, so clock offsets do not matter. Without emission times
    the events are judged by their arrival alone, and the result says so.
  - Integrity compares the concatenated C(content) of the token events with the done event's
    C({"tokens", "sha256", "bytes"}) summary.
  - >-
    With O(resume), once every hop streams, each hop that asks for it also runs the resume hop: a second stream
    of its URL is cut halfway (curl is stopped), resumed from the reply's C(Content-Location) with
    C(Last-Event-ID), and the two parts must join up exactly (ids one above the previous, nothing twice, the
    joined text matching the done event). A hop whose cut stream does not resume fails with the verdict
    C(not_resumable), attributed hop by hop like the others (C(nginx does not resume a cut stream: backend
    resumes a cut stream, but ...)).
  - The same core runs as the C(bin/stream-check) CLI.
author:
  - pi5 streaming maintainers
# BEGIN OPTIONS: generated from module_utils/stream_check/options.py by scripts/module_docs.py
options:
  url:
    description:
    - The SSE endpoint to check. Mutually exclusive with O(hops).
    type: str
  name:
    description:
    - Label for the checked endpoint in the diagnosis (for example V(nginx)). Defaults to the proxy the response's
      headers name (V(nginx), V(Caddy), V(Cloudflare)...), else V(the server).
    type: str
  hops:
    description:
    - Ordered hops of the path to the browser, first the backend alone. Each hop takes O(hops[].name) and O(hops[].url)
      plus any of the request and criteria options of this module, which override the top-level values for that
      hop only (unset ones inherit them).
    - The hops are checked at the same time, each over its own fresh connection; the module result names the RV(first_bad_hop)
      and attributes the fault to it.
    type: list
    elements: dict
    suboptions:
      name:
        description: Hop name used in the diagnosis (V(backend), V(nginx), V(tunnel)).
        type: str
        required: true
      url:
        description: The hop's URL.
        type: str
        required: true
      method:
        description:
        - Overrides O(method).
        type: str
      data:
        description:
        - Overrides O(data).
        type: raw
      headers:
        description:
        - Overrides O(headers).
        type: dict
      insecure:
        description:
        - Overrides O(insecure).
        type: bool
      cacert:
        description:
        - Overrides O(cacert).
        type: path
      resolve:
        description:
        - Overrides O(resolve).
        type: list
        elements: str
      http_version:
        description:
        - Overrides O(http_version).
        type: str
        choices:
        - auto
        - '1.1'
        - '2'
      max_time:
        description:
        - Overrides O(max_time).
        type: float
      connect_timeout:
        description:
        - Overrides O(connect_timeout).
        type: float
      watch:
        description:
        - Overrides O(watch).
        type: float
      min_events:
        description:
        - Overrides O(min_events).
        type: int
      expect_done:
        description:
        - Overrides O(expect_done).
        type: bool
      min_span_ratio:
        description:
        - Overrides O(min_span_ratio).
        type: float
      max_burst_share:
        description:
        - Overrides O(max_burst_share).
        type: float
      burst_window_ms:
        description:
        - Overrides O(burst_window_ms).
        type: float
      min_delivery_ratio:
        description:
        - Overrides O(min_delivery_ratio).
        type: float
      max_lateness_ms:
        description:
        - Overrides O(max_lateness_ms).
        type: float
      expect_heartbeats:
        description:
        - Overrides O(expect_heartbeats).
        type: bool
      heartbeat_interval_ms:
        description:
        - Overrides O(heartbeat_interval_ms).
        type: float
      expect_header:
        description:
        - Overrides O(expect_header).
        type: str
      resume:
        description:
        - Overrides O(resume).
        type: bool
  stop_on_failure:
    description:
    - With O(hops), check the hops one after another and stop after the first hop that fails, instead of checking
      every hop at the same time.
    type: bool
    default: false
  method:
    description:
    - HTTP method. Defaults to V(GET), or V(POST) when O(data) is given.
    type: str
  data:
    description:
    - 'Request body, sent with C(Content-Type: application/json). A dict or list is serialised to JSON.'
    type: raw
  headers:
    description:
    - 'Extra request headers. A header named like a default (C(Accept), C(Accept-Encoding), C(Cache-Control), C(Content-Type))
      replaces that default. On the command line, C(-H ''Name: value''), repeatable.'
    type: dict
    default: {}
  insecure:
    description:
    - Skip TLS certificate verification (curl C(-k)).
    type: bool
    default: false
  cacert:
    description:
    - CA bundle to verify the server certificate with.
    type: path
  resolve:
    description:
    - curl C(--resolve HOST:PORT:ADDRESS) entries, to test a TLS server name against a local address.
    type: list
    elements: str
    default: []
  http_version:
    description:
    - 'V(1.1) forces HTTP/1.1, V(2) asks for HTTP/2. V(auto) checks every protocol the server offers: over https,
      HTTP/2 and HTTP/1.1 (each on its own fresh connection, at the same time), and fails naming the protocol that
      does not stream; a CDN or tunnel reaches an origin over HTTP/1.1 even when browsers use HTTP/2. Over http,
      HTTP/1.1 (browsers never use cleartext HTTP/2).'
    type: str
    choices:
    - auto
    - '1.1'
    - '2'
    default: auto
  max_time:
    description:
    - Seconds the whole stream may take (curl C(--max-time)).
    type: float
    default: 10.0
    aliases:
    - timeout_s
  connect_timeout:
    description:
    - Seconds to establish the connection.
    type: float
    default: 5.0
  watch:
    description:
    - 'Watch an endless feed (no done event) for this many seconds and judge what arrived in that window: the end
      of the window is the normal end, not a timeout, and no done event is expected.'
    type: float
  curl_path:
    description:
    - The curl executable.
    type: str
    default: curl
  min_events:
    description:
    - Fewest events (the done event and heartbeats not counted) needed to prove incremental delivery.
    type: int
    default: 5
  expect_done:
    description:
    - 'Require a terminating done event (C(event: done), C(data: [DONE]), a JSON C(type) of V(done) or V(message_stop)).
      Set to V(false) for endpoints without one; then a clean end of the response is enough.'
    type: bool
    default: true
  min_span_ratio:
    description:
    - When events carry emission times, the events must arrive spread over at least this share of the span they
      were emitted over.
    type: float
    default: 0.5
  max_burst_share:
    description:
    - Largest share of all events allowed to arrive within O(burst_window_ms) of each other.
    type: float
    default: 0.5
  burst_window_ms:
    description:
    - Events arriving this close together count as one burst.
    type: float
    default: 10.0
  min_delivery_ratio:
    description:
    - Smallest share of events that must arrive in a delivery of their own. An event emitted more than O(burst_window_ms)
      after the previous one but arriving within O(burst_window_ms) of it was held back and shares a delivery. Catches
      a stream released in a few large bunches.
    type: float
    default: 0.5
  max_lateness_ms:
    description:
    - Largest lateness allowed for any event, measured against its emission time relative to the least-delayed event.
    type: float
    default: 1000.0
  expect_heartbeats:
    description:
    - Require C(:) comment heartbeats. The stream must pause longer than O(heartbeat_interval_ms) at least once,
      and no silence (counted from the request, so a server that holds even its headers is caught) may exceed 1.5
      times the interval.
    type: bool
    default: false
  heartbeat_interval_ms:
    description:
    - The interval the server sends heartbeat comments at when idle.
    type: float
    default: 15000.0
  expect_header:
    description:
    - 'A response header the answer must carry, as C(Name: value), for example C(X-Config-Revision: 3f2a9c). Proves
      that the config that answers is the one just deployed; a missing or different value gives the verdict V(stale_config).'
    type: str
  resume:
    description:
    - 'After the stream check passes, the resume hop: stream the same URL again, cut the connection (curl stops)
      once half the tokens the check counted have arrived, and reconnect to the reply''s URL that the response''s
      C(Content-Location) header names, with C(Last-Event-ID) set to the last C(id) received and the same headers,
      CA, O(resolve) and HTTP version (a GET without a body). Passes only if the resumed response is a C(200) C(text/event-stream)
      that ends with a done event, every event of both connections carries an integer C(id) one above the previous
      one (the first after the cut is the last one before it plus one: nothing missing, nothing twice), and the
      joined token text matches the done event''s C(tokens), C(bytes) and C(sha256). Otherwise the verdict is V(not_resumable),
      naming what broke: no C(Content-Location), a replay from the start (ids twice), skipped ids, a different text,
      or an C(expired) reply. A C(Content-Location) on another origin is not followed (the request''s credentials
      would go with it). Needs a done event, so not with O(watch) or O(expect_done=false).'
    type: bool
    default: false
# END OPTIONS
notes:
  - Check mode runs the check as usual; it only reads from the endpoint and never changes anything
    (RV(changed) is always V(false)).
  - Every run opens a new connection, so after an nginx reload it is answered by a new worker with the
    new config, never by an old worker that still holds an earlier connection.
  - Needs C(curl) on the host the module runs on. Python standard library only.
attributes:
  check_mode:
    support: full
    details: Read-only; runs in check mode too.
  diff_mode:
    support: none
  platform:
    platforms: posix
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
seealso:
  - name: Server-sent events (HTML Living Standard)
    description: The event stream format the check parses.
    link: https://html.spec.whatwg.org/multipage/server-sent-events.html
"""

EXAMPLES = r"""
- name: Check that the probe streams through nginx
  pi5.streaming.stream_check:
    url: http://127.0.0.1/api/probe/stream?tokens=20&interval_ms=50
    name: nginx
    expect_header: "X-Config-Revision: {{ nginx_site_revision }}"

- name: Check hop by hop and blame the first hop that buffers
  pi5.streaming.stream_check:
    hops:
      - name: backend
        url: http://127.0.0.1:7776/api/probe/stream?tokens=20&interval_ms=50
      - name: nginx
        url: https://pi5.local/api/probe/stream?tokens=20&interval_ms=50
        insecure: true
        resolve: ["pi5.local:443:127.0.0.1"]
        expect_header: "X-Config-Revision: {{ nginx_site_revision }}"
    max_time: 15
  register: stream

- name: Check that a cut probe resumes through nginx as well (backend and nginx, each cut and resumed)
  pi5.streaming.stream_check:
    hops:
      - name: backend
        url: http://127.0.0.1:7776/api/probe/stream?tokens=20&interval_ms=50
      - name: nginx
        url: https://pi5.local/api/probe/stream?tokens=20&interval_ms=50
        cacert: /etc/nginx/pi5-tls/cert.pem
        resolve: ["pi5.local:443:127.0.0.1"]
    headers:
      Authorization: "Bearer {{ backend_auth_token }}"
    resume: true
  register: stream

- name: Print the summary table
  ansible.builtin.debug:
    msg: "{{ stream.table.splitlines() }}"

- name: Check an arbitrary SSE endpoint without a done event
  pi5.streaming.stream_check:
    url: https://chat.example.org/v1/stream
    method: POST
    data: {prompt: "count to twenty"}
    headers:
      Authorization: "Bearer {{ token }}"
    expect_done: false
"""

RETURN = r"""
verdict:
  description:
    - C(incremental), or the first failed criterion; with O(hops) or both protocols, that of the first bad hop.
  returned: always
  type: str
  sample: buffered
  choices: [incremental, buffered, truncated, http_error, wrong_content_type, compressed, integrity,
            heartbeat_missing, connect_error, tls_error, timeout, stale_config, too_few_events, not_resumable]
incremental:
  description: Whether the events arrived incrementally (on every hop).
  returned: always
  type: bool
diagnosis:
  description: The likely cause in plain words (also the failure message).
  returned: always
  type: str
  sample: "nginx delivers all 20 events in one burst after 2.0 s: check proxy_buffering / gzip for text/event-stream"
summary:
  description: One line with the measurements.
  returned: always
  type: str
  sample: >-
    incremental: 20 events, first after 45 ms, spread over 980 ms, largest burst 1 (5%),
    max lateness 12 ms (HTTP/1.1)
table:
  description:
    - The human summary table, lines separated by newlines; print it with
      C(ansible.builtin.debug) and C(msg="{{ result.table.splitlines() }}").
  returned: always
  type: str
first_bad_hop:
  description: Name of the first hop that is not incremental, or null.
  returned: with O(hops), or with O(url) over https when both HTTP/2 and HTTP/1.1 were checked
  type: str
hops:
  description: The full per-hop (and per-protocol) results, each with the keys returned for a single check.
  returned: with O(hops), or with O(url) over https when both HTTP/2 and HTTP/1.1 were checked
  type: list
  elements: dict
url:
  description: The checked URL.
  returned: with O(url)
  type: str
status:
  description: HTTP status (null when no response arrived).
  returned: with O(url)
  type: int
  sample: 200
http_version:
  description: HTTP version of the response.
  returned: with O(url)
  type: str
  sample: "1.1"
content_type:
  description: Content-Type of the response.
  returned: with O(url)
  type: str
content_encoding:
  description: Content-Encoding of the response (null when not compressed).
  returned: with O(url)
  type: str
headers:
  description: Response headers of interest (Content-Type, Content-Encoding, X-Accel-Buffering, X-Config-Revision...).
  returned: with O(url)
  type: dict
ttfb_ms:
  description: Time to the first response byte (curl time_starttransfer).
  returned: with O(url)
  type: float
first_event_ms:
  description: Arrival of the first event since the request started.
  returned: with O(url)
  type: float
span_ms:
  description: Time between the first and the last event.
  returned: with O(url)
  type: float
events:
  description: Number of events before the done event.
  returned: with O(url)
  type: int
heartbeats:
  description: Number of C(:) comments (open markers and keepalives).
  returned: with O(url)
  type: int
largest_burst:
  description: Most events that arrived within O(burst_window_ms) of each other.
  returned: with O(url)
  type: int
burst_share:
  description: RV(largest_burst) divided by RV(events).
  returned: with O(url)
  type: float
deliveries:
  description: Number of separate deliveries the events arrived in.
  returned: with O(url)
  type: int
lateness_p50_ms:
  description: Median lateness (needs C(ts) in the events).
  returned: with O(url)
  type: float
lateness_max_ms:
  description: Worst lateness (needs C(ts) in the events).
  returned: with O(url)
  type: float
ended_cleanly:
  description: The done event arrived (or, with O(expect_done=false), curl ended without error).
  returned: with O(url)
  type: bool
integrity:
  description: C(ok), C(mismatch) or C(not_checked).
  returned: with O(url)
  type: str
failures:
  description: "Every failed criterion as C(verdict: diagnosis), the verdict's first."
  returned: with O(url)
  type: list
  elements: str
arrivals_ms:
  description: Arrival time of each event since the request started.
  returned: with O(url)
  type: list
  elements: float
proxies:
  description: Every proxy or CDN the response's headers name, outermost first, each with its evidence.
  returned: with O(url)
  type: list
  elements: str
  sample: ["Cloudflare (a cf-ray header)", "nginx (Server: nginx/1.22.1)"]
timestamps:
  description: Where the events' emission times came from and in which unit, or why none were used.
  returned: with O(url)
  type: str
  sample: "`ts` in seconds (epoch seconds, by their magnitude)"
longest_silence_ms:
  description: The longest time nothing arrived, counted from the request (headers held back count).
  returned: with O(url)
  type: float
resume:
  description:
    - The resume hop (with O(hops), in each element of RV(hops)); null without O(resume), or when it did not
      run because a hop failed the stream check first.
  returned: with O(url)
  type: dict
  contains:
    ok:
      description: The cut stream resumed with nothing missing or twice and the joined text matched the done event.
      type: bool
    observed:
      description: What happened, without the likely cause.
      type: str
    diagnosis:
      description: The summary when RV(resume.ok), else what broke and the likely cause (the failure message).
      type: str
      sample: >-
        the resume sent events already received: Last-Event-ID: 10 was answered from id 1 (ids 1-10 twice): the
        server (or a proxy that drops the header) ignored Last-Event-ID and replayed the reply from the start
    resume_url:
      description: The reply's URL (C(Content-Location) resolved against the URL), null when none was requested.
      type: str
      sample: https://pi5.local/api/probe/replies/0f3c2a9e8b7d4c1fa2b3c4d5e6f70812
    cut_after_tokens:
      description: Token events received before curl was stopped (half of what the stream check counted).
      type: int
    last_event_id:
      description: The C(Last-Event-ID) the resume request sent.
      type: str
    ids_before:
      description: The ids of the events before the cut, as received.
      type: list
      elements: str
    ids_after:
      description: The ids of the events of the resumed response.
      type: list
      elements: str
    tokens:
      description: Token events of both parts together.
      type: int
    status:
      description: HTTP status of the resumed response.
      type: int
    elapsed_ms:
      description: Time for both connections.
      type: float
"""

from typing import Any

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pi5.streaming.plugins.module_utils.stream_check import (
    OPTIONS,
    CheckResult,
    Hop,
    HopsResult,
    StreamCheckError,
    argument_spec,
    check,
    hop_from_mapping,
    options_from_mapping,
    render,
)


def _defaults(params: dict[str, Any]) -> dict[str, Any]:
    """The top-level request and criteria options, in the core's terms."""
    return {opt.name: params[opt.ansible_name] for opt in OPTIONS}


def run(params: dict[str, Any]) -> CheckResult | HopsResult:
    """The check the parameters ask for; raises StreamCheckError for bad options."""
    defaults = _defaults(params)
    if params["hops"]:
        hops = [hop_from_mapping(hop, defaults) for hop in params["hops"]]
    else:
        request, criteria = options_from_mapping({**defaults, "url": params["url"]})
        hops = [Hop(params["name"] or "", request, criteria)]
    return check(hops, stop_on_failure=params["stop_on_failure"])


# Request headers that carry a credential: their values never appear in the module's output or logs.
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})


def secret_header_values(params: dict[str, Any]) -> set[str]:
    """The values (and, for ``Scheme credentials``, the credentials alone) of SECRET_HEADERS in every hop."""
    found: set[str] = set()
    for headers in [params.get("headers")] + [hop.get("headers") for hop in params.get("hops") or []]:
        for name, value in (headers or {}).items():
            if name.lower() in SECRET_HEADERS and str(value).strip():
                found.add(str(value))
                found.update(part for part in str(value).split(None, 1)[1:] if part.strip())
    return found


def main() -> None:
    module = AnsibleModule(
        argument_spec=argument_spec(),
        mutually_exclusive=[("url", "hops")],
        required_one_of=[("url", "hops")],
        # Read-only: the check runs in check mode as well.
        supports_check_mode=True,
    )
    module.no_log_values.update(secret_header_values(module.params))
    try:
        outcome = run(module.params)
    except StreamCheckError as exc:
        module.fail_json(msg=str(exc))
    result = outcome.to_dict()
    result["table"] = render(outcome)
    for note in result.get("notes", []):
        module.warn(note)
    if not outcome.incremental:
        module.fail_json(msg=outcome.diagnosis, changed=False, **result)
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
