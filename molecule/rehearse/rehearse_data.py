#!/usr/bin/env python3
"""Chat data on the simulated Pi for the SD-card rehearsal (scripts/rehearse.sh).

  make-threads INSTANCE STATE      start chat threads through the backend's API, record their ids
  snapshot INSTANCE STATE OUT      the threads as GET returns them, and every data file's sha256 and owner
  compare BEFORE AFTER [--allow-new] exit 1 unless AFTER holds BEFORE's threads and files unchanged
  check-archive ARCHIVE SNAPSHOT   exit 1 unless the archive's manifest lists exactly SNAPSHOT's data files

Everything runs on the Pi with `docker exec`, as a person would check it there.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

BACKEND = "http://127.0.0.1:7776"
DATA_DIR = "/var/lib/pi5-backend"
# Config the repository cannot recreate as it was: the same TLS key must come back.
# The simulated Pis' chat token (molecule/resources/group_vars/pi5.yml makes it once in .cache/).
TOKEN_FILE = Path(__file__).resolve().parents[2] / ".cache" / "sim-auth-token"
CONFIG = ["/etc/nginx/pi5-tls/key.pem", "/etc/nginx/pi5-tls/cert.pem", "/etc/docker/daemon.json"]
MESSAGES = ["hello from the rehearsal", "what does an SD card die of?", "tell me about nginx buffering"]


# The chat API rate-limits each client (1/s, burst 10, each API process its share): as any client
# of it, curl waits out a 429 (its Retry-After) and tries again.
RETRY = ["--retry", "5"]


def on_pi(instance: str, *argv: str) -> str:
    run = subprocess.run(["docker", "exec", instance, *argv], capture_output=True, text=True, timeout=60, check=False)
    if run.returncode != 0:
        raise SystemExit(f"`{' '.join(argv)}` on {instance} failed ({run.returncode}): {run.stderr.strip()}")
    return run.stdout


def auth_header() -> str:
    return f"Authorization: Bearer {TOKEN_FILE.read_text().split()[0]}"


def send(instance: str, message: str, thread_id: str | None = None) -> str:
    """POST one chat message, read the whole SSE reply, return the thread id it was stored under."""
    body = json.dumps({"message": message, **({"threadId": thread_id} if thread_id else {})})
    out = on_pi(instance, "curl", "-fsS", "-N", *RETRY, "--max-time", "30", "-X", "POST", f"{BACKEND}/api/chat/message",
                "-H", "Content-Type: application/json", "-H", auth_header(), "-d", body)
    events = [json.loads(line[6:]) for line in out.splitlines() if line.startswith("data: ")]
    if not events or events[-1]["type"] != "done" or any(e["type"] == "error" for e in events):
        raise SystemExit(f"the reply to {message!r} did not stream to its end: {out[-500:]}")
    return str(events[0]["threadId"])


def make_threads(instance: str, state: Path) -> None:
    ids = [send(instance, message) for message in MESSAGES]
    send(instance, "and a second turn in the first thread", ids[0])
    known = json.loads(state.read_text()) if state.exists() else []
    state.write_text(json.dumps(known + ids))
    print(f"started {len(ids)} threads on {instance} ({len(ids) + 1} messages)")


def snapshot(instance: str, state: Path) -> dict[str, Any]:
    ids = json.loads(state.read_text())
    threads = {i: json.loads(on_pi(instance, "curl", "-fsS", *RETRY, "-H", auth_header(), f"{BACKEND}/api/chat/threads/{i}"))
               for i in ids}
    sums = on_pi(instance, "sh", "-c", f"cd {DATA_DIR} && find . -type f -exec sha256sum {{}} +")
    owners = on_pi(instance, "find", DATA_DIR, "-printf", "%P %U:%G %m\n")
    config = on_pi(instance, "sha256sum", *CONFIG)
    return {
        "threads": threads,
        "files": {name.removeprefix("./"): digest for digest, name in (line.split("  ", 1) for line in sums.splitlines())},
        # "<path> <uid>:<gid> <mode>", the data directory itself as "".
        "owners": {line.rsplit(" ", 2)[0]: " ".join(line.rsplit(" ", 2)[1:]) for line in owners.splitlines()},
        "config": {name: digest for digest, name in (line.split("  ", 1) for line in config.splitlines())},
    }


def archive_problems(archive: Path, shot: dict[str, Any]) -> list[str]:
    """The archive's manifest must list every data file of the snapshot with the same sha256, and no other."""
    with tarfile.open(archive, "r:gz") as tar:
        member = tar.extractfile("MANIFEST.sha256")
        if member is None:
            return [f"{archive} has no MANIFEST.sha256"]
        lines = member.read().decode().splitlines()
    manifest = {name.removeprefix("data/"): digest for digest, name in (line.split("  ", 1) for line in lines)
                if name.startswith("data/")}
    return [f"data file {name}: {shot['files'].get(name)} on the Pi, {manifest.get(name)} in the manifest"
            for name in sorted(set(manifest) | set(shot["files"])) if manifest.get(name) != shot["files"].get(name)]


def compare(before: dict[str, Any], after: dict[str, Any], allow_new: bool) -> list[str]:
    problems = []
    for key in ("threads", "files", "owners", "config"):
        for name, value in before[key].items():
            if after[key].get(name) != value:
                problems.append(f"{key}: {name!r} was {value!r}, now {after[key].get(name)!r}")
        extra = sorted(set(after[key]) - set(before[key]))
        if extra and not allow_new:
            problems.append(f"{key}: not there before: {extra}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("make-threads")
    make.add_argument("instance")
    make.add_argument("state", type=Path)
    snap = sub.add_parser("snapshot")
    snap.add_argument("instance")
    snap.add_argument("state", type=Path)
    snap.add_argument("out", type=Path)
    comp = sub.add_parser("compare")
    comp.add_argument("before", type=Path)
    comp.add_argument("after", type=Path)
    comp.add_argument("--allow-new", action="store_true", help="files and threads added since BEFORE are fine")
    arch = sub.add_parser("check-archive")
    arch.add_argument("archive", type=Path)
    arch.add_argument("snapshot", type=Path)
    args = parser.parse_args()
    if args.command == "make-threads":
        make_threads(args.instance, args.state)
    elif args.command == "snapshot":
        shot = snapshot(args.instance, args.state)
        args.out.write_text(json.dumps(shot, indent=1, sort_keys=True))
        print(f"{len(shot['threads'])} threads, {len(shot['files'])} data files, owners {sorted(set(shot['owners'].values()))}")
    elif args.command == "check-archive":
        problems = archive_problems(args.archive, json.loads(args.snapshot.read_text()))
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            return 1
        print(f"{args.archive.name}: its manifest lists the Pi's data files with their sha256")
    else:
        problems = compare(json.loads(args.before.read_text()), json.loads(args.after.read_text()), args.allow_new)
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            return 1
        print(f"identical: every thread (GET), every data file (sha256, owner, mode) and the TLS key of {args.before.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
