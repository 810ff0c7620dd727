"""Where the load generator runs: inside the simulated Pi (docker exec) or on a real Pi (ssh)."""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
CORE = REPO / "collections/ansible_collections/pi5/streaming/plugins/module_utils/stream_check"
REMOTE_DIR = "/opt/pi5bench"


@dataclass(frozen=True)
class Pi:
    """The Pi the bench drives: ``container`` (docker exec) or ``ssh`` (user@host, passwordless sudo)."""

    container: str | None = "pi5-sim"
    ssh: str | None = None

    def argv(self, command: list[str], env: dict[str, str] | None = None) -> list[str]:
        env = env or {}
        if self.ssh:
            assignments = [f"{k}={shlex.quote(v)}" for k, v in env.items()]
            return ["ssh", "-o", "BatchMode=yes", self.ssh, "sudo", *assignments, shlex.join(command)]
        flags = [arg for k, v in env.items() for arg in ("-e", f"{k}={v}")]
        return ["docker", "exec", *flags, str(self.container), *command]

    def run(
        self, command: list[str], timeout_s: float = 120, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(command, env), capture_output=True, text=True, timeout=timeout_s, check=False)

    def copy_in(self, source: Path, dest: str) -> None:
        if self.ssh:
            subprocess.run(["scp", "-q", "-r", str(source), f"{self.ssh}:/tmp/{Path(dest).name}"], check=True)
            self.run(["mv", f"/tmp/{Path(dest).name}", dest])  # noqa: S108
        else:
            subprocess.run(["docker", "cp", str(source), f"{self.container}:{dest}"], check=True, capture_output=True)

    def install_bench(self) -> None:
        """The load generator and the stream check core (and bin/stream-check) into REMOTE_DIR."""
        self.run(["rm", "-rf", REMOTE_DIR])
        self.run(
            ["mkdir", "-p", f"{REMOTE_DIR}/bin", f"{REMOTE_DIR}/collections/ansible_collections/pi5/streaming/plugins"]
        )
        self.copy_in(Path(__file__).resolve().parent, f"{REMOTE_DIR}/pi5bench")
        self.copy_in(CORE.parent, f"{REMOTE_DIR}/collections/ansible_collections/pi5/streaming/plugins/module_utils")
        self.copy_in(REPO / "bin/stream-check", f"{REMOTE_DIR}/bin/stream-check")

    def loadgen(self, phase: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """Run one phase of the load generator on the Pi and return its figures."""
        proc = self.run(
            ["python3", "-m", "pi5bench.loadgen", json.dumps(phase)],
            timeout_s=timeout_s,
            env={"PYTHONPATH": f"{REMOTE_DIR}:{REMOTE_DIR}/collections"},
        )
        if proc.returncode != 0:
            raise RuntimeError(f"loadgen failed ({proc.returncode}): {proc.stderr[-2000:]}")
        figures: dict[str, Any] = json.loads(proc.stdout)
        return figures

    def wait_until(self, command: list[str], timeout_s: float, every_s: float = 1.0) -> float | None:
        """Seconds until ``command`` succeeds on the Pi, None after ``timeout_s``."""
        start = time.monotonic()
        while time.monotonic() - start < timeout_s:
            try:
                if self.run(command, timeout_s=30).returncode == 0:
                    return round(time.monotonic() - start, 2)
            except subprocess.TimeoutExpired:
                pass
            time.sleep(every_s)
        return None
