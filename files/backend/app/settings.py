"""Typed settings read once from the environment at start-up.

Every variable is parsed and range-checked here, so a bad value stops the
process before it binds a port, with a message that names the variable.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
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
            auth_token=e.optional("BACKEND_AUTH_TOKEN"),
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
        )


@dataclass(frozen=True, slots=True)
class _Env:
    """Typed accessors over an environment mapping; blank counts as unset."""

    env: Mapping[str, str]

    def optional(self, name: str) -> str | None:
        value = self.env.get(name, "").strip()
        return value or None

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
