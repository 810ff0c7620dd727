"""Settings: typed parsing from the environment, failing early and by name."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest

from app.main import create_app
from app.server import build_server
from app.settings import DEFAULT_ANTHROPIC_MODEL, Settings, SettingsError
from tests.backend.backend_harness import BACKEND_DIR, clean_env

REDIS = {"BACKEND_REDIS_PASSWORD": "redis-secret"}


def test_defaults() -> None:
    settings = Settings.from_env({"BACKEND_AUTH_TOKEN": "tok", **REDIS})
    assert settings == Settings(auth_token="tok", redis_password="redis-secret")
    assert (settings.port, settings.host, settings.provider) == (
        7776,
        "0.0.0.0",  # noqa: S104  (the default inside the container)
        "demo",
    )
    assert (settings.token_interval_ms, settings.heartbeat_s) == (40, 15.0)
    assert (settings.keepalive_s, settings.graceful_shutdown_s) == (75, 10)
    assert settings.forwarded_allow_ips == "127.0.0.1"
    assert settings.probe_rate_per_s == 5.0
    assert settings.data_dir == Path("/data")
    assert (settings.auth_token, settings.auth_off) == ("tok", False)
    assert settings.anthropic_api_key is None
    assert (settings.max_body_kb, settings.header_timeout_s, settings.max_connections) == (64, 10, 2048)
    assert (settings.thread_max_kb, settings.store_max_mb) == (1024, 1024)
    assert (settings.probe_max_streams, settings.probe_max_s) == (32, 60)
    assert (settings.redis_host, settings.redis_port, settings.redis_outage_s) == ("127.0.0.1", 6379, 30)
    assert (settings.processes, settings.worker_concurrency, settings.worker_lease_ms) == (1, 16, 5000)
    assert (settings.reply_ttl_s, settings.reply_max_events) == (600, 20_000)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, "BACKEND_REDIS_PASSWORD: required"),
        ("", "BACKEND_REDIS_PASSWORD: required"),
        ("  ", "BACKEND_REDIS_PASSWORD: required"),
        (" pw ", "BACKEND_REDIS_PASSWORD: has leading"),
    ],
)
def test_the_redis_password_is_required(value: str | None, message: str) -> None:
    env = {"BACKEND_AUTH": "off"} | ({} if value is None else {"BACKEND_REDIS_PASSWORD": value})
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)


def test_each_process_enforces_its_share_of_the_limits() -> None:
    settings = Settings.from_env({"BACKEND_AUTH": "off", "BACKEND_PROCESSES": "4", "BACKEND_PROBE_MAX_STREAMS": "30",
                                  "BACKEND_CHAT_BURST": "10", "BACKEND_MAX_CONNECTIONS": "2048", **REDIS})
    share = settings.one_process_share()
    assert (share.probe_max_streams, share.chat_burst, share.max_connections) == (8, 3, 512)
    assert (share.chat_rate_per_s, share.probe_rate_per_s) == (0.25, 1.25)
    assert settings.one_process_share().processes == 4
    one = Settings.from_env({"BACKEND_AUTH": "off", **REDIS})
    assert one.one_process_share() is one
    server = build_server(settings, create_app(settings))  # what each process's uvicorn enforces
    assert server.config.limit_concurrency == 512
    assert server.app_state.settings.probe_max_streams == 8


@pytest.mark.parametrize(
    ("env", "names"),
    [
        (REDIS, "BACKEND_AUTH_TOKEN: required"),
        ({"BACKEND_AUTH_TOKEN": ""}, "BACKEND_AUTH_TOKEN: set but blank"),
        ({"BACKEND_AUTH_TOKEN": "   "}, "BACKEND_AUTH_TOKEN: set but blank"),
        ({"BACKEND_AUTH_TOKEN": " tok "}, "BACKEND_AUTH_TOKEN: has leading"),
        ({"BACKEND_AUTH_TOKEN": "tok", "BACKEND_AUTH": "off"}, "BACKEND_AUTH: off, but"),
        ({"BACKEND_AUTH": "maybe"}, "BACKEND_AUTH: expected one of"),
    ],
)
def test_auth_is_never_off_by_accident(env: dict[str, str], names: str) -> None:
    with pytest.raises(SettingsError, match=names):
        Settings.from_env(REDIS | env)


def test_auth_off_only_by_name() -> None:
    settings = Settings.from_env({"BACKEND_AUTH": "OFF", **REDIS})
    assert (settings.auth_off, settings.auth_token) == (True, None)


def test_every_variable_is_read_with_its_type() -> None:
    env = {
        "BACKEND_PORT": "8080",
        "BACKEND_HOST": "127.0.0.1",
        "BACKEND_PROVIDER": "Anthropic",
        "ANTHROPIC_API_KEY": "sk-ant-x",
        "ANTHROPIC_MODEL": "claude-x",
        "ANTHROPIC_BASE_URL": "http://127.0.0.1:9",
        "ANTHROPIC_MAX_TOKENS": "2048",
        "ANTHROPIC_MAX_RETRIES": "0",
        "BACKEND_PROVIDER_TIMEOUT_S": "12.5",
        "BACKEND_TOKEN_INTERVAL_MS": "0",
        "BACKEND_HEARTBEAT_S": "0.2",
        "BACKEND_SEND_TIMEOUT_S": "3",
        "BACKEND_AUTH_TOKEN": "tok",
        "BACKEND_DATA_DIR": "/srv/data",
        "BACKEND_KEEPALIVE_S": "30",
        "BACKEND_GRACEFUL_SHUTDOWN_S": "0",
        "BACKEND_FORWARDED_ALLOW_IPS": "172.17.0.1,127.0.0.1",
        "BACKEND_PROBE_RATE_PER_S": "0.5",
        "BACKEND_LOG_LEVEL": "DEBUG",
        "BACKEND_REDIS_HOST": "::1",
        "BACKEND_REDIS_PORT": "6380",
        "BACKEND_REDIS_PASSWORD": "pw",
        "BACKEND_REDIS_OUTAGE_S": "2.5",
        "BACKEND_PROCESSES": "4",
        "BACKEND_WORKER_CONCURRENCY": "3",
        "BACKEND_WORKER_LEASE_MS": "1500",
        "BACKEND_REPLY_TTL_S": "60",
        "BACKEND_REPLY_MAX_EVENTS": "100",
    }
    assert Settings.from_env(env) == Settings(
        port=8080,
        host="127.0.0.1",
        provider="anthropic",
        anthropic_api_key="sk-ant-x",
        anthropic_model="claude-x",
        anthropic_base_url="http://127.0.0.1:9",
        anthropic_max_tokens=2048,
        anthropic_max_retries=0,
        provider_timeout_s=12.5,
        token_interval_ms=0,
        heartbeat_s=0.2,
        send_timeout_s=3.0,
        auth_token="tok",
        data_dir=Path("/srv/data"),
        keepalive_s=30,
        graceful_shutdown_s=0,
        forwarded_allow_ips="172.17.0.1,127.0.0.1",
        probe_rate_per_s=0.5,
        log_level="debug",
        redis_host="::1",
        redis_port=6380,
        redis_password="pw",
        redis_outage_s=2.5,
        processes=4,
        worker_concurrency=3,
        worker_lease_ms=1500,
        reply_ttl_s=60,
        reply_max_events=100,
    )


def test_blank_values_mean_unset() -> None:
    settings = Settings.from_env({"BACKEND_PORT": " ", "BACKEND_AUTH": "off", **REDIS})
    assert (settings.port, settings.auth_token) == (7776, None)


def test_secrets_stay_out_of_repr() -> None:
    text = repr(Settings(anthropic_api_key="sk-ant-secret", auth_token="tok-secret", redis_password="pw-secret"))
    assert "secret" not in text


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BACKEND_PORT", "abc"),
        ("BACKEND_PORT", "0"),
        ("BACKEND_PORT", "70000"),
        ("BACKEND_PORT", "80.5"),
        ("BACKEND_PROVIDER", "openai"),
        ("BACKEND_HEARTBEAT_S", "0"),
        ("BACKEND_HEARTBEAT_S", "nan"),
        ("BACKEND_SEND_TIMEOUT_S", "-1"),
        ("BACKEND_PROVIDER_TIMEOUT_S", "soon"),
        ("BACKEND_TOKEN_INTERVAL_MS", "-5"),
        ("BACKEND_KEEPALIVE_S", "1.5"),
        ("BACKEND_GRACEFUL_SHUTDOWN_S", "-1"),
        ("BACKEND_PROBE_RATE_PER_S", "inf"),
        ("ANTHROPIC_BASE_URL", "ftp://example.invalid"),
        ("BACKEND_LOG_LEVEL", "loud"),
        ("BACKEND_MAX_BODY_KB", "0"),
        ("BACKEND_MAX_CONNECTIONS", "0"),
        ("BACKEND_HEADER_TIMEOUT_S", "0"),
        ("BACKEND_BODY_TIMEOUT_S", "never"),
        ("BACKEND_CHAT_RATE_PER_S", "-1"),
        ("BACKEND_THREAD_MAX_KB", "1"),
        ("BACKEND_STORE_MAX_MB", "0"),
        ("BACKEND_PROBE_MAX_STREAMS", "-1"),
        ("BACKEND_PROBE_MAX_S", "0"),
        ("BACKEND_REDIS_PORT", "0"),
        ("BACKEND_REDIS_PORT", "redis"),
        ("BACKEND_REDIS_OUTAGE_S", "0"),
        ("BACKEND_PROCESSES", "0"),
        ("BACKEND_PROCESSES", "1.5"),
        ("BACKEND_PROCESSES", "257"),
        ("BACKEND_WORKER_CONCURRENCY", "0"),
        ("BACKEND_WORKER_LEASE_MS", "999"),
        ("BACKEND_REPLY_TTL_S", "5"),
        ("BACKEND_REPLY_MAX_EVENTS", "9"),
        ("BACKEND_REPLY_MAX_EVENTS", "many"),
    ],
)
def test_invalid_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=f"^{name}: .*{value!r}"):
        Settings.from_env(REDIS | {name: value})


def test_bad_setting_stops_the_process_before_it_serves() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "app"],
        cwd=BACKEND_DIR,
        env=clean_env({"BACKEND_HEARTBEAT_S": "fast", "BACKEND_PORT": "1"}),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "BACKEND_HEARTBEAT_S" in result.stderr
    assert "'fast'" in result.stderr
    assert "Traceback" not in result.stderr


def test_default_model_is_known_to_the_sdk_and_not_retiring() -> None:
    from anthropic.types import Model  # noqa: PLC0415

    known = {arg for part in get_args(Model) for arg in get_args(part)}
    assert DEFAULT_ANTHROPIC_MODEL in known
    deprecated = pytest.importorskip("anthropic._data.deprecated_models")
    assert DEFAULT_ANTHROPIC_MODEL not in deprecated.DEPRECATED_MODELS
