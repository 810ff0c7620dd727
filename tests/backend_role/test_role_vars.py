"""The backend role's container environment, rendered by Ansible from the role's own defaults and vars on stand-in inputs."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.runner import TEST_REDIS_PASSWORD, render_role_var


def container_env(tmp: Path, **inputs: Any) -> dict[str, str]:
    tmp.mkdir(exist_ok=True)
    env: dict[str, str] = render_role_var(tmp, "backend", "backend_container_env",
                                          {"ansible_facts": {"processor_vcpus": 4}, **inputs})
    return env


def test_both_containers_reach_redis_on_loopback_with_the_shared_port_and_password(tmp_path: Path) -> None:
    """redis_port and redis_password are the shared settings the redis role serves: the backend derives from them."""
    env = container_env(tmp_path / "a")
    assert (env["BACKEND_REDIS_HOST"], env["BACKEND_REDIS_PORT"], env["BACKEND_REDIS_PASSWORD"]) == (
        "127.0.0.1", "6379", TEST_REDIS_PASSWORD)
    moved = container_env(tmp_path / "b", redis_port=6390, redis_password="another-password-of-20")
    assert (moved["BACKEND_REDIS_PORT"], moved["BACKEND_REDIS_PASSWORD"]) == ("6390", "another-password-of-20")


def test_one_delivery_process_per_core_of_the_pi_unless_set(tmp_path: Path) -> None:
    assert container_env(tmp_path / "a")["BACKEND_PROCESSES"] == "4"
    assert container_env(tmp_path / "b", ansible_facts={"processor_vcpus": 2})["BACKEND_PROCESSES"] == "2"
    assert container_env(tmp_path / "c", backend_processes=3)["BACKEND_PROCESSES"] == "3"


def test_the_reply_settings_reach_the_containers_as_strings(tmp_path: Path) -> None:
    """Docker's environment is strings; the backend parses and range-checks them again at start."""
    env = container_env(tmp_path, backend_worker_concurrency=8, backend_reply_ttl_s=900, backend_reply_max_events=5000)
    assert (env["BACKEND_WORKER_CONCURRENCY"], env["BACKEND_REPLY_TTL_S"], env["BACKEND_REPLY_MAX_EVENTS"]) == (
        "8", "900", "5000")
    assert all(isinstance(value, str) for value in env.values()), env


def test_every_name_the_preflight_keeps_from_backend_env_is_one_the_role_sets(tmp_path: Path) -> None:
    """The refusal list and the environment agree: a name refused but never set would leave the backend's default."""
    owned = render_role_var(tmp_path, "backend", "backend_env_owned", {})
    env = container_env(tmp_path / "env")
    assert {"BACKEND_REDIS_PASSWORD", "BACKEND_PROCESSES", "BACKEND_HOST"} <= set(owned)
    assert set(owned) - set(env) == set()


def test_extra_environment_reaches_the_containers(tmp_path: Path) -> None:
    """backend_env's names the role does not own (the worker's lease, say) are passed on."""
    env = container_env(tmp_path, backend_env={"BACKEND_WORKER_LEASE_MS": "8000"})
    assert env["BACKEND_WORKER_LEASE_MS"] == "8000"
