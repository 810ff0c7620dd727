"""Every nginx the suite starts: the role's site as shipped, and the variants.

Each variant is the role's own templates rendered by Ansible with role
variables an inventory could set (``overrides``), plus, where the template
cannot express it, a small edit of the rendered site or an http-level snippet
(what a stray conf.d file adds). The one-line ``why`` names the real-world
misconfiguration (see the deployment notes in the project's seeds) it
reproduces. What each one does to a stream is in test_nginx_streaming.py.
"""

from __future__ import annotations

from tests.nginx.nginx_harness import Site

# The probe the role's stream check uses (nginx_verify_probe_tokens/_interval_ms defaults).
PROBE = "/api/probe/stream?tokens=20&interval_ms=50"
# The classic wrong upstream port (the Pi's nginx proxied to 8000, the backend ran on 7776).
CLASSIC_WRONG_PORT = 8000

# proxy_buffering on, and the backend's "X-Accel-Buffering: no" ignored: a generic
# caching/proxy snippet ("proxy_ignore_headers X-Accel-Buffering X-Accel-Expires ...").
BUFFERING_IGNORED = (
    "        proxy_buffering off;\n",
    "        proxy_buffering on;\n        proxy_ignore_headers X-Accel-Buffering;\n",
)
# A hand-written site (or an older template) without the stream location's "gzip off".
NO_LOCATION_GZIP_OFF = ("        gzip off;\n", "")
# text/event-stream added to the role's gzip types (the role's preflight refuses it;
# rendering the template directly shows what nginx would do with it).
GZIP_TYPES_WITH_SSE = {
    "nginx_gzip_types": [
        "text/plain",
        "text/css",
        "application/javascript",
        "application/json",
        "image/svg+xml",
        "text/event-stream",
    ]
}


# The role without TLS (nginx_tls: false): the site on plain HTTP only.
PLAIN = {"nginx_tls": False}
# A hand-written HTTPS site: "listen 443 ssl;" without http2 (nginx 1.22's listen syntax).
NO_HTTP2 = ("ssl http2 default_server;", "ssl default_server;")


def in_stream_location(*lines: str) -> tuple[str, str]:
    """An edit adding directives to the stream location, right after its "gzip off"."""
    return ("        gzip off;\n", "        gzip off;\n" + "".join(f"        {line}\n" for line in lines))


# A test plays many clients from one machine: nginx takes the client's address from
# X-Real-IP (the realip module), so each request can come from any IPv4 or IPv6 address.
AS_ANY_CLIENT = "set_real_ip_from 127.0.0.1;\nreal_ip_header X-Real-IP;\n"
# The role's limits, shrunk so a test reaches them in a second: 2 requests at once and
# 1 per second (burst 3) per client, headers and body within 1 s.
SMALL_LIMITS = {
    **PLAIN,
    "nginx_limit_conn_per_client": 2,
    "nginx_limit_req_per_s": 1,
    "nginx_limit_req_burst": 3,
    "nginx_client_header_timeout_s": 1,
    "nginx_client_body_timeout_s": 1,
}
# The settings issue 13 attacked: no per-client limits, the request body streamed to the
# backend as it arrives, and nginx's own 60 s header and body timeouts.
OLD_LIMITS = {
    **PLAIN,
    "nginx_limit_conn_per_client": 0,
    "nginx_limit_req_per_s": 0,
    "nginx_proxy_request_buffering": False,
    "nginx_client_header_timeout_s": 60,
    "nginx_client_body_timeout_s": 60,
}


def limit_sites(recorder_port: int) -> list[Site]:
    """The limits, and the old settings beside them; the *_recorder ones proxy to a socket that records."""
    recorder = {"backend_port": recorder_port}
    return [
        Site("limits", "the role's per-client limits and timeouts (shrunk)", overrides=SMALL_LIMITS, http=AS_ANY_CLIENT),
        Site("limits_old", "no limits, unbuffered request bodies (issue 13's attacks worked)", overrides=OLD_LIMITS,
             http=AS_ANY_CLIENT),
        Site("limits_recorder", "the role's limits, upstream a recording socket", overrides={**SMALL_LIMITS, **recorder}),
        Site("limits_old_recorder", "the old settings, upstream a recording socket", overrides={**OLD_LIMITS, **recorder}),
    ]


# A proxy that keeps the backend's headers to itself (a "hide upstream details" snippet).
HIDES_CONTENT_LOCATION = ('        proxy_set_header Connection "";\n',
                          '        proxy_set_header Connection "";\n        proxy_hide_header Content-Location;\n')
# A proxy that passes only the headers it names (a "hardening" snippet): Last-Event-ID never reaches the backend.
DROPS_REQUEST_HEADERS = ('        proxy_set_header Connection "";\n',
                         '        proxy_set_header Connection "";\n        proxy_pass_request_headers off;\n')


def resume_sites(resume_port: int) -> list[Site]:
    """The shipped site and two snippets that break resuming, upstream the stand-in for resumable replies."""
    upstream = {"backend_port": resume_port}
    return [
        Site("resume_shipped", "the role's defaults, upstream resumable replies", overrides=upstream),
        Site("resume_hidden_location", "proxy_hide_header Content-Location", overrides=upstream,
             edits=(HIDES_CONTENT_LOCATION,)),
        Site("resume_no_request_headers", "proxy_pass_request_headers off", overrides=upstream,
             edits=(DROPS_REQUEST_HEADERS,)),
    ]


def catalogue(wrong_port: int = CLASSIC_WRONG_PORT, recorder_port: int = 0, resume_port: int = 0) -> list[Site]:
    return [
        *(limit_sites(recorder_port) if recorder_port else []),
        *(resume_sites(resume_port) if resume_port else []),
        # --- the role as shipped: HTTPS with HTTP/2, plain HTTP redirects ----------------
        Site("shipped", "the role's defaults", page=True),
        Site("shipped_plain", "the role with nginx_tls: false (plain HTTP only)", overrides=PLAIN, page=True),
        Site("shipped_reload", "the role's defaults; reloaded while a stream is open"),
        # --- settings that look wrong but still stream (documentation) --------------------
        Site(
            "buffering_on",
            "nginx's default proxy_buffering on (seed: the Verse Pi, 'nginx buffers by default')",
            overrides={"nginx_proxy_buffering": True},
        ),
        Site(
            "buffering_ignored_plain",
            "proxy_buffering on + proxy_ignore_headers X-Accel-Buffering (a generic proxy snippet), plain HTTP",
            overrides=PLAIN,
            edits=(BUFFERING_IGNORED,),
        ),
        Site(
            "gzip_types_sse",
            "text/event-stream in the http-level gzip_types (seed: 'ensure no compression middleware')",
            overrides=GZIP_TYPES_WITH_SSE,
        ),
        Site(
            "http10_upstream",
            "proxy_http_version left at nginx's default 1.0 (seeds: every guide says 'set 1.1')",
            overrides={"nginx_proxy_http_version": "1.0"},
        ),
        Site(
            "chunked_off",
            "chunked_transfer_encoding off (seed 004's guide recommends it)",
            overrides={"nginx_chunked_transfer_encoding": False},
        ),
        Site(
            "cache_on",
            "proxy_cache from a conf.d caching snippet and no 'proxy_cache off' in the stream location",
            overrides={"nginx_proxy_cache": True},
            http="    proxy_cache_path {prefix}/cache keys_zone=pi5_cache:1m;\n"
            "    proxy_cache pi5_cache;\n    proxy_cache_valid 200 10m;\n",
        ),
        Site(
            "ssi_on",
            "ssi on for every type (ssi_types *), left over from a templated site",
            edits=(in_stream_location("ssi on;", "ssi_types *;"),),
        ),
        Site(
            "limit_rate",
            "limit_rate 512 (bytes/s) to protect a Pi's uplink",
            edits=(in_stream_location("limit_rate 512;"),),
        ),
        # --- misconfigurations that buffer or break the stream ---------------------------
        Site(
            "buffering_ignored",
            "proxy_buffering on + proxy_ignore_headers X-Accel-Buffering (a generic proxy snippet)",
            edits=(BUFFERING_IGNORED,),
        ),
        Site(
            "buffering_ignored_no_http2",
            "the same behind a hand-written 'listen 443 ssl' without http2",
            edits=(BUFFERING_IGNORED, NO_HTTP2),
            page=True,
        ),
        Site(
            "gzip_sse",
            "text/event-stream in gzip_types and a stream location without 'gzip off'",
            overrides=GZIP_TYPES_WITH_SSE,
            edits=(NO_LOCATION_GZIP_OFF,),
            page=True,
        ),
        Site(
            "gzip_sse_buffering_ignored",
            "the same gzip, with proxy_buffering on and X-Accel-Buffering ignored",
            overrides=GZIP_TYPES_WITH_SSE,
            edits=(NO_LOCATION_GZIP_OFF, BUFFERING_IGNORED),
            page=True,
        ),
        Site(
            "wrong_upstream_port",
            "nginx proxies to 8000 while the backend runs on another port (seed: the Verse Pi, 8000 vs 7776)",
            # backend_port as one inventory would set it for nginx alone (the group_vars set it for both).
            overrides={"backend_port": wrong_port},
        ),
        Site(
            "short_read_timeout",
            "proxy_read_timeout shorter than a pause of the model (seed: 90 s before the fix to 3600 s)",
            overrides={"nginx_stream_read_timeout_s": 1},
        ),
        Site(
            "location_not_routed",
            "only the chat stream is proxied (seed 001: location /api/chat/message/stream)",
            overrides={"nginx_stream_locations": [{"path": "/api/chat/message/stream"}]},
        ),
        Site(
            "spa_fallback",
            "the front end's 'try_files ... /index.html' answers the API paths nginx does not proxy",
            overrides={"nginx_stream_locations": [{"path": "/api/chat"}], "nginx_static_root": "{prefix}/html"},
            files={"html/index.html": "<!doctype html><title>chat</title><div id=app></div>\n"},
        ),
        Site(
            "sub_filter",
            "sub_filter with sub_filter_types * rewriting text in every proxied response",
            edits=(in_stream_location("sub_filter ' world' ' World';", "sub_filter_types *;"),),
        ),
        Site(
            "short_worker_shutdown",
            "worker_shutdown_timeout 1s: a reload cuts the open streams of the old workers",
            overrides={"nginx_worker_shutdown_timeout_s": 1},
        ),
    ]
