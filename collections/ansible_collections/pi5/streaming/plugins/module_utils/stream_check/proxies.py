"""Which proxy or CDN answered, from the response's headers, and the setting that fixes each.

A response tells who relayed it: ``Server``, ``Via``, vendor headers (``cf-ray``,
``x-amzn-*``, ``x-cloud-trace-context``, ``x-vercel-id``...), even the case of its
header names (HAProxy sends every name in lower case, its documentation says,
regardless of the HTTP version). :func:`fingerprint` names every layer it
recognises, outermost first; :func:`advice` words the fix for the first one.
The settings come from each proxy's own documentation (named in ``source``);
the ones marked "measured" were reproduced with the Debian package in
``tests/third_party`` (see the README's proxies table).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

__all__ = ["PROXIES", "Proxy", "advice", "fingerprint", "primary"]


@dataclass(frozen=True)
class Proxy:
    """A proxy or CDN: its name, what it holds a stream with, and the settings that stop it."""

    key: str
    name: str
    buffering: str  # the setting(s) that stop it buffering a text/event-stream response
    compression: str  # the setting(s) that keep it from compressing text/event-stream
    source: str  # where that is documented


PROXIES: Final[Mapping[str, Proxy]] = {
    proxy.key: proxy
    for proxy in (
        Proxy(
            "nginx",
            "nginx",
            "proxy_buffering off in the stream's location (or the backend's X-Accel-Buffering: no, unless "
            "proxy_ignore_headers drops it); on Kubernetes ingress-nginx, the annotation "
            'nginx.ingress.kubernetes.io/proxy-buffering: "off"',
            "gzip off in the stream's location, and no text/event-stream in gzip_types",
            "nginx ngx_http_proxy_module (proxy_buffering), ingress-nginx annotations",
        ),
        Proxy(
            "haproxy",
            "HAProxy",
            "option http-no-delay in the frontend or backend (without it HAProxy sends small writes in batches "
            "about 200 ms apart, measured), and no http-response wait-for-body for the stream",
            "no text/event-stream in compression type",
            "HAProxy configuration manual (option http-no-delay, http-response wait-for-body, compression)",
        ),
        Proxy(
            "apache",
            "Apache httpd",
            "nothing that holds the response: mod_proxy_http flushes whenever the backend pauses (measured), but "
            "ModSecurity with SecResponseBodyAccess On buffers every type in SecResponseBodyMimeType: take "
            "text/event-stream out of it, or SecResponseBodyAccess Off for the stream's location; behind "
            "mod_proxy_fcgi, flushpackets=on",
            "SetEnv no-gzip 1 in the stream's location, and no DEFLATE filter for text/event-stream "
            "(AddOutputFilterByType)",
            "Apache mod_proxy, mod_deflate; ModSecurity reference manual (SecResponseBodyAccess)",
        ),
        Proxy(
            "lighttpd",
            "lighttpd",
            "server.stream-response-body = 2 (or 1): its default, 0, holds the whole response and sends it with "
            "a Content-Length (measured)",
            "no text/event-stream in deflate.mimetypes",
            "lighttpd server.stream-response-body, mod_deflate",
        ),
        Proxy(
            "caddy",
            "Caddy",
            "no buffer_responses (Caddy 2.6; response_buffers from 2.7) in the reverse_proxy block; "
            "flush_interval -1 makes it flush after every write",
            "exclude text/event-stream from the encode directive's match",
            "Caddy reverse_proxy (flush_interval, buffer_responses / response_buffers), encode",
        ),
        Proxy(
            "traefik",
            "Traefik",
            "no buffering middleware (maxResponseBodyBytes) on the stream's router; responseForwarding."
            "flushInterval on the service",
            "excludedContentTypes: text/event-stream on the compress middleware",
            "Traefik middlewares (buffering, compress), services (responseForwarding)",
        ),
        Proxy(
            "envoy",
            "Envoy (Istio)",
            "no buffer filter on the stream's route; a stream_idle_timeout above the longest silence",
            "no text/event-stream in the compressor filter's content_type",
            "Envoy buffer and compressor HTTP filters",
        ),
        Proxy(
            "cloudflare",
            "Cloudflare",
            "Cache-Control: no-cache from the origin and no Cache Rule caching the path; Response Buffering off "
            "(Enterprise); heartbeats more often than 100 s (the proxy read timeout, error 524)",
            "Cache-Control: no-transform from the origin keeps the edge from compressing the stream",
            "Cloudflare docs: Cache-Control, response buffering, connection limits",
        ),
        Proxy(
            "cloudfront",
            "Amazon CloudFront",
            "a cache behaviour for the stream with caching disabled (CachingDisabled policy); an origin response "
            "timeout above the longest silence",
            "Compress objects automatically off for that behaviour",
            "Amazon CloudFront developer guide",
        ),
        Proxy(
            "aws",
            "AWS (ALB / API Gateway / Lambda)",
            "ALB streams from instance and IP targets; a Lambda target or API Gateway returns the whole "
            "response at once: use a Lambda function URL with InvokeMode RESPONSE_STREAM, or an instance/ECS "
            "target; an ALB idle timeout (60 s by default) above the longest silence",
            "no compression of text/event-stream at the origin",
            "Elastic Load Balancing, Lambda response streaming docs",
        ),
        Proxy(
            "google",
            "Google Cloud load balancer / Google Front End",
            "a backend service timeout (30 s by default) above the stream's length; no Cloud CDN caching of "
            "the path (Cache-Control: no-cache); Cloud Run streams, App Engine standard returns the whole "
            "response at once",
            "Cache-Control: no-transform from the origin",
            "Google Cloud load balancing backend services, Cloud Run docs",
        ),
        Proxy(
            "vercel",
            "Vercel",
            "return a streamed Response (a ReadableStream) from a streaming function, and a maxDuration above "
            "the stream's length (the plan's limit cuts it)",
            "no compression of text/event-stream in the function",
            "Vercel functions: streaming, maxDuration",
        ),
        Proxy(
            "netlify",
            "Netlify",
            "stream from a Netlify Function returning a ReadableStream (response streaming), not a buffered "
            "function; mind the function's time limit",
            "no compression of text/event-stream in the function",
            "Netlify Functions: response streaming",
        ),
        Proxy(
            "fly",
            "Fly.io",
            "no buffering at the fly-proxy for HTTP services; send heartbeats so idle connections are not closed",
            "no compression of text/event-stream at the origin",
            "Fly.io services docs",
        ),
        Proxy(
            "heroku",
            "Heroku router",
            "the router streams; send a byte within 30 s of the request and then at least every 55 s",
            "no compression of text/event-stream at the origin",
            "Heroku HTTP routing: timeouts",
        ),
        Proxy(
            "fastly",
            "Fastly",
            "return(pass) for the stream (no caching) and beresp.do_stream = true",
            "beresp.gzip off for text/event-stream",
            "Fastly VCL: streaming miss",
        ),
        Proxy(
            "varnish",
            "Varnish",
            "return (pipe) or set beresp.do_stream = true with return (pass) for the stream",
            "set beresp.do_gzip = false for text/event-stream",
            "Varnish VCL reference",
        ),
        Proxy(
            "azure",
            "Azure Front Door",
            "no caching on the stream's route; an origin response timeout above the longest silence",
            "compression off for the route, or no text/event-stream in its content types",
            "Azure Front Door caching and compression docs",
        ),
        Proxy(
            "squid",
            "Squid",
            "no delay_pools on the path; cache deny for the stream's URL",
            "no compression adaptation (eCAP/ICAP) for text/event-stream",
            "Squid configuration reference",
        ),
        Proxy(
            "kong",
            "Kong",
            "response_buffering: false on the route",
            "no response-transformer or compression plugin on the stream's route",
            "Kong Gateway route object (response_buffering)",
        ),
        Proxy(
            "iis",
            "IIS / ARR",
            'responseBufferLimit="0" on the stream\'s handler (ARR: the reverse proxy\'s response buffer threshold)',
            "dynamic compression off for text/event-stream",
            "IIS ARR and system.webServer/handlers docs",
        ),
    )
}

# Server header prefix (lower case) -> proxy key.
_SERVER: Final = (
    ("cloudflare", "cloudflare"),
    ("awselb", "aws"),
    ("amazons3", "aws"),
    ("google frontend", "google"),
    ("gfe", "google"),
    ("gws", "google"),
    ("vercel", "vercel"),
    ("netlify", "netlify"),
    ("fly/", "fly"),
    ("caddy", "caddy"),
    ("openresty", "nginx"),
    ("nginx", "nginx"),
    ("apache", "apache"),
    ("lighttpd", "lighttpd"),
    ("envoy", "envoy"),
    ("istio-envoy", "envoy"),
    ("microsoft-iis", "iis"),
    ("traefik", "traefik"),
    ("kong", "kong"),
    ("squid", "squid"),
    ("varnish", "varnish"),
)
# Other headers that give a layer away: (header name pattern, proxy key, what to say).
_MARKERS: Final = (
    (re.compile(r"^cf-(ray|cache-status)$"), "cloudflare"),
    (re.compile(r"^x-amz-cf-(id|pop)$"), "cloudfront"),
    (re.compile(r"^x-amzn-|^x-amz-apigw-id$"), "aws"),
    (re.compile(r"^x-cloud-trace-context$|^x-goog-"), "google"),
    (re.compile(r"^x-vercel-"), "vercel"),
    (re.compile(r"^x-nf-request-id$"), "netlify"),
    (re.compile(r"^fly-request-id$"), "fly"),
    (re.compile(r"^x-fastly-|^fastly-"), "fastly"),
    (re.compile(r"^x-varnish$"), "varnish"),
    (re.compile(r"^x-azure-ref$"), "azure"),
    (re.compile(r"^x-envoy-"), "envoy"),
    (re.compile(r"^x-kong-"), "kong"),
    (re.compile(r"^x-squid-error$"), "squid"),
)
_VIA: Final = (
    ("cloudfront", "cloudfront"),
    ("google", "google"),
    ("vegur", "heroku"),
    ("heroku", "heroku"),
    ("varnish", "varnish"),
    ("squid", "squid"),
    ("kong", "kong"),
    ("caddy", "caddy"),
    ("envoy", "envoy"),
    ("apache", "apache"),
    ("nginx", "nginx"),
)
# Origin servers that themselves send every header name in lower case: the case then tells nothing.
_LOWER_CASE_ORIGINS: Final = ("uvicorn", "hypercorn", "granian", "daphne", "hyper", "axum", "actix")


@dataclass(frozen=True)
class Layer:
    key: str
    evidence: str

    @property
    def proxy(self) -> Proxy:
        return PROXIES[self.key]

    @property
    def name(self) -> str:
        return self.proxy.name


def _lower_case_names(names: Sequence[str], server: str, http_version: str | None) -> bool:
    """Every header name in lower case over HTTP/1.x, from no origin that does that itself: HAProxy."""
    if not names or (http_version or "").startswith("2") or http_version == "3":
        return False
    if any(server.lower().startswith(origin) for origin in _LOWER_CASE_ORIGINS):
        return False
    return all(name == name.lower() for name in names) and any(any(c.isalpha() for c in name) for name in names)


def fingerprint(
    headers: Mapping[str, str], names: Sequence[str] = (), http_version: str | None = None
) -> list[Layer]:
    """Every proxy or CDN the response's headers name, outermost first (CDNs before origin proxies)."""
    found: dict[str, str] = {}
    server = headers.get("server", "")
    for name in headers:
        for pattern, key in _MARKERS:
            if pattern.search(name):
                found.setdefault(key, f"a {name} header")
    for hop in (part.strip() for part in headers.get("via", "").split(",") if part.strip()):
        for marker, key in _VIA:
            if marker in hop.lower():
                found.setdefault(key, f"Via: {hop}")
                break
    for prefix, key in _SERVER:
        if server.lower().startswith(prefix):
            found.setdefault(key, f"Server: {server}")
            break
    if _lower_case_names(names, server, http_version):
        found.setdefault("haproxy", "every header name in lower case over HTTP/1.1, as HAProxy sends them")
    order = list(PROXIES)
    cdn_first = sorted(found, key=lambda key: (key not in _EDGE, order.index(key)))
    return [Layer(key, found[key]) for key in cdn_first]


# Layers that sit in front of others when several answer.
_EDGE: Final = frozenset(
    {"cloudflare", "cloudfront", "aws", "google", "vercel", "netlify", "fly", "heroku", "fastly", "azure"}
)


def primary(layers: Sequence[Layer]) -> Layer | None:
    """The layer a diagnosis is addressed to: the innermost named proxy (closest to the origin)."""
    return layers[-1] if layers else None


def advice(layers: Sequence[Layer], kind: str) -> str:
    """The fix for every named layer (``kind`` "buffering" or "compression"), innermost first."""
    parts = [
        f"{layer.name} (named by {layer.evidence}): {getattr(layer.proxy, kind)}" for layer in reversed(layers)
    ]
    return "; ".join(parts)
