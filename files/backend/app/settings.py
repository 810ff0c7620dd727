"""Typed settings read once from the environment at start-up.

Every variable is parsed and range-checked here, so a bad value stops the
process before it binds a port, with a message that names the variable.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, TypeVar, cast

ProviderName = Literal["demo", "anthropic"]
PROVIDERS: tuple[ProviderName, ...] = ("demo", "anthropic")
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
DEFAULT_ANTHROPIC_MODEL = "claude-sonnet-5-5"  # claude-sonnet-4-5 retires 2026-11-30

_N = TypeVar("_N", int, float)


class SettingsError(ValueError):
    """An environment variable is missing a valid value; the message names it."""


@dataclass(frozen=True, slots=True)
class Settings:
    port: int = 7776
    host: str = "0.0.0.0"
    provider: ProviderName = "demo"
    anthropic_api_key: str | None = field(default=None, repr=False)
    anthropic_model: str = DEFAULT_ANTHROPIC_MODEL
    anthropic_base_url: str | None = None
    anthropic_max_tokens: int = 1024
    anthropic_max_retries: int = 2
    provider_timeout_s: float = 60.0
    token_interval_ms: int = 40
    heartbeat_s: float = 15.0
    send_timeout_s: float = 30.0
    auth_token: str | None = field(default=None, repr=False)
    data_dir: Path = Path("/data")
    keepalive_s: int = 75
    graceful_shutdown_s: int = 10
    forwarded_allow_ips: str = "127.0.0.1"
    probe_rate_per_s: float = 5.0
    log_level: str = "info"
    # Limits against a hostile client (README, "Security").
    auth_off: bool = False
    max_body_kb: int = 64
    body_timeout_s: float = 10.0
    header_timeout_s: float = 10.0
    max_connections: int = 2048
    chat_rate_per_s: float = 1.0
    chat_burst: int = 10
    rate_limit_clients: int = 10_000
    probe_max_streams: int = 32
    probe_max_s: int = 60
    thread_max_kb: int = 1024
    store_max_mb: int = 1024
    # Replies in flight live in Redis (README, "What lives in Redis").
    redis_host: str = "127.0.0.1"
    redis_port: int = 6379
    redis_password: str | None = field(default=None, repr=False)
    redis_outage_s: float = 30.0
    processes: int = 1
    worker_concurrency: int = 16
    worker_lease_ms: int = 5000
    reply_ttl_s: int = 600
    reply_max_events: int = 20_000

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``env`` (default ``os.environ``); raise SettingsError."""
        e = _Env(os.environ if env is None else env)
        d = cls()
        return cls(
            port=e.number("BACKEND_PORT", int, d.port, low=1, high=65535),
            host=e.text("BACKEND_HOST", d.host),
            provider=cast("ProviderName", e.choice("BACKEND_PROVIDER", d.provider, PROVIDERS)),
            anthropic_api_key=e.optional("ANTHROPIC_API_KEY"),
            anthropic_model=e.text("ANTHROPIC_MODEL", d.anthropic_model),
            anthropic_base_url=e.url("ANTHROPIC_BASE_URL"),
            anthropic_max_tokens=e.number(
                "ANTHROPIC_MAX_TOKENS", int, d.anthropic_max_tokens, low=1, high=128_000
            ),
            anthropic_max_retries=e.number(
                "ANTHROPIC_MAX_RETRIES", int, d.anthropic_max_retries, low=0, high=10
            ),
            provider_timeout_s=e.number(
                "BACKEND_PROVIDER_TIMEOUT_S", float, d.provider_timeout_s, low=0.1, high=3600
            ),
            token_interval_ms=e.number(
                "BACKEND_TOKEN_INTERVAL_MS", int, d.token_interval_ms, low=0, high=10_000
            ),
            heartbeat_s=e.number("BACKEND_HEARTBEAT_S", float, d.heartbeat_s, low=0.05, high=3600),
            send_timeout_s=e.number(
                "BACKEND_SEND_TIMEOUT_S", float, d.send_timeout_s, low=0.1, high=3600
            ),
            auth_token=e.secret("BACKEND_AUTH_TOKEN"),
            auth_off=e.choice("BACKEND_AUTH", "required", ("required", "off")) == "off",
            data_dir=Path(e.text("BACKEND_DATA_DIR", str(d.data_dir))),
            keepalive_s=e.number("BACKEND_KEEPALIVE_S", int, d.keepalive_s, low=1, high=3600),
            graceful_shutdown_s=e.number(
                "BACKEND_GRACEFUL_SHUTDOWN_S", int, d.graceful_shutdown_s, low=0, high=3600
            ),
            forwarded_allow_ips=e.text("BACKEND_FORWARDED_ALLOW_IPS", d.forwarded_allow_ips),
            probe_rate_per_s=e.number(
                "BACKEND_PROBE_RATE_PER_S", float, d.probe_rate_per_s, low=0, high=100_000
            ),
            log_level=e.choice("BACKEND_LOG_LEVEL", d.log_level, LOG_LEVELS),
            max_body_kb=e.number("BACKEND_MAX_BODY_KB", int, d.max_body_kb, low=1, high=10_240),
            body_timeout_s=e.number(
                "BACKEND_BODY_TIMEOUT_S", float, d.body_timeout_s, low=0.1, high=3600
            ),
            header_timeout_s=e.number(
                "BACKEND_HEADER_TIMEOUT_S", float, d.header_timeout_s, low=0.1, high=3600
            ),
            max_connections=e.number(
                "BACKEND_MAX_CONNECTIONS", int, d.max_connections, low=1, high=1_000_000
            ),
            chat_rate_per_s=e.number(
                "BACKEND_CHAT_RATE_PER_S", float, d.chat_rate_per_s, low=0, high=100_000
            ),
            chat_burst=e.number("BACKEND_CHAT_BURST", int, d.chat_burst, low=1, high=100_000),
            rate_limit_clients=e.number(
                "BACKEND_RATE_LIMIT_CLIENTS", int, d.rate_limit_clients, low=1, high=10_000_000
            ),
            probe_max_streams=e.number(
                "BACKEND_PROBE_MAX_STREAMS", int, d.probe_max_streams, low=0, high=1_000_000
            ),
            probe_max_s=e.number("BACKEND_PROBE_MAX_S", int, d.probe_max_s, low=1, high=3600),
            thread_max_kb=e.number(
                "BACKEND_THREAD_MAX_KB", int, d.thread_max_kb, low=16, high=1_048_576
            ),
            store_max_mb=e.number("BACKEND_STORE_MAX_MB", int, d.store_max_mb, low=1, high=1_048_576),
            redis_host=e.text("BACKEND_REDIS_HOST", d.redis_host),
            redis_port=e.number("BACKEND_REDIS_PORT", int, d.redis_port, low=1, high=65535),
            redis_password=e.required_secret("BACKEND_REDIS_PASSWORD"),
            redis_outage_s=e.number(
                "BACKEND_REDIS_OUTAGE_S", float, d.redis_outage_s, low=1, high=3600
            ),
            processes=e.number("BACKEND_PROCESSES", int, d.processes, low=1, high=256),
            worker_concurrency=e.number(
                "BACKEND_WORKER_CONCURRENCY", int, d.worker_concurrency, low=1, high=10_000
            ),
            # Above a second: a lease refreshed every third of it must survive a busy event loop.
            worker_lease_ms=e.number(
                "BACKEND_WORKER_LEASE_MS", int, d.worker_lease_ms, low=1000, high=600_000
            ),
            reply_ttl_s=e.number("BACKEND_REPLY_TTL_S", int, d.reply_ttl_s, low=10, high=604_800),
            reply_max_events=e.number(
                "BACKEND_REPLY_MAX_EVENTS", int, d.reply_max_events, low=10, high=1_000_000
            ),
        )._checked()

    def one_process_share(self) -> Settings:
        """The limits one of BACKEND_PROCESSES processes enforces: its share of each global one.

        Every process counts in its own memory (no Redis round trip per request, no count
        left behind by a process that died), and the kernel spreads connections evenly over
        the processes; so each enforces 1/N of a cap or rate, rounded up to stay usable. The
        sum never exceeds the setting by more than N-1; a client whose connection lands on a
        full process is refused a little early and retries (Retry-After).
        """
        n = self.processes
        if n == 1:
            return self
        return replace(
            self,
            max_connections=math.ceil(self.max_connections / n),
            probe_max_streams=math.ceil(self.probe_max_streams / n),
            chat_rate_per_s=self.chat_rate_per_s / n,
            chat_burst=math.ceil(self.chat_burst / n),
            probe_rate_per_s=self.probe_rate_per_s / n,
        )

    def _checked(self) -> Settings:
        """Refuse an open backend unless asked for by name: never off by accident."""
        if self.auth_off and self.auth_token is not None:
            raise SettingsError("BACKEND_AUTH: off, but BACKEND_AUTH_TOKEN is set; choose one")
        if not self.auth_off and self.auth_token is None:
            raise SettingsError(
                "BACKEND_AUTH_TOKEN: required (or BACKEND_AUTH=off to serve the chat to anyone)"
            )
        return self


@dataclass(frozen=True, slots=True)
class _Env:
    """Typed accessors over an environment mapping; blank counts as unset."""

    env: Mapping[str, str]

    def optional(self, name: str) -> str | None:
        value = self.env.get(name, "").strip()
        return value or None

    def secret(self, name: str) -> str | None:
        """Unset is None; set but blank is an error, never a silent 'off'."""
        if name not in self.env:
            return None
        value = self.env[name]
        if not value.strip():
            raise SettingsError(f"{name}: set but blank; give a token or unset it")
        if value != value.strip():
            raise SettingsError(f"{name}: has leading or trailing white space")
        return value

    def required_secret(self, name: str) -> str:
        """A secret that must be given: unset is as much an error as blank."""
        if not self.env.get(name, "").strip():
            raise SettingsError(f"{name}: required (unset or blank)")
        return cast("str", self.secret(name))

    def text(self, name: str, default: str) -> str:
        return self.optional(name) or default

    def choice(self, name: str, default: str, allowed: tuple[str, ...]) -> str:
        value = self.text(name, default).lower()
        if value not in allowed:
            raise SettingsError(f"{name}: expected one of {', '.join(allowed)}, got {value!r}")
        return value

    def url(self, name: str) -> str | None:
        value = self.optional(name)
        if value is not None and not value.startswith(("http://", "https://")):
            raise SettingsError(f"{name}: expected an http:// or https:// URL, got {value!r}")
        return value

    def number(self, name: str, kind: Callable[[str], _N], default: _N, *, low: _N, high: _N) -> _N:
        raw = self.optional(name)
        if raw is None:
            return default
        try:
            value = kind(raw)
        except ValueError:
            noun = "an integer" if kind is int else "a number"
            raise SettingsError(f"{name}: expected {noun}, got {raw!r}") from None
        if not low <= value <= high:  # also rejects nan
            raise SettingsError(f"{name}: must be between {low} and {high}, got {raw!r}")
        return value
