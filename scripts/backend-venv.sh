#!/usr/bin/env bash
# Create or refresh .venv-backend: the reference chat backend's runtime
# dependencies (files/backend/requirements.txt) plus its test and lint tools
# (files/backend/requirements-dev.txt), all installed with --require-hashes.
# Idempotent: skipped when the stamp (sha256 of both requirement files, this
# script and the interpreter version) matches; rebuilt from scratch otherwise.
# Usage: bash scripts/backend-venv.sh    (then .venv-backend/bin/pytest tests/backend)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$root/.venv-backend"
reqs=("$root/files/backend/requirements.txt" "$root/files/backend/requirements-dev.txt")
python=${BACKEND_VENV_PYTHON:-python3.11}

command -v "$python" >/dev/null || { echo "backend-venv: $python not found" >&2; exit 1; }

stamp=$( { sha256sum "${reqs[@]}" "${BASH_SOURCE[0]}" | cut -d' ' -f1
           "$python" -c 'import sys; print(sys.version)'; } | sha256sum | cut -d' ' -f1 )

if [[ -x "$venv/bin/python" && -f "$venv/.stamp" && "$(cat "$venv/.stamp")" == "$stamp" ]]; then
  echo "backend-venv: $venv is current"
  exit 0
fi

echo "backend-venv: building $venv"
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
  --require-hashes --only-binary=:all: -r "${reqs[0]}" -r "${reqs[1]}"
# Only write the stamp once everything installed, so a failed run is retried.
echo "$stamp" >"$venv/.stamp"
echo "backend-venv: ready ($("$venv/bin/python" --version))"
