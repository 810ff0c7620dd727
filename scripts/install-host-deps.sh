#!/usr/bin/env bash
# Install what a fresh Debian 12 controller lacks to run `make test`:
# a Docker engine (the simulated Pi runs in it), debootstrap (builds the Pi
# images without a registry), and the real nginx, curl and Chromium that the
# stream-check tests drive. Idempotent; needs root.
set -euo pipefail

packages=(docker.io debootstrap nginx-light curl chromium ca-certificates iproute2 make)

missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done

if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The Debian nginx package starts a server on :80 on install; the tests run
# their own nginx processes on loopback ports, so the packaged one is stopped.
if command -v systemctl >/dev/null && systemctl is-active --quiet nginx 2>/dev/null; then
  systemctl stop nginx || true
fi
pkill -f "nginx: master process /usr/sbin/nginx" 2>/dev/null || true

if ! docker info >/dev/null 2>&1; then
  echo "starting dockerd"
  nohup dockerd >/var/log/dockerd.log 2>&1 &
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    sleep 1
  done
  docker info >/dev/null 2>&1 || { echo "dockerd did not start; see /var/log/dockerd.log" >&2; exit 1; }
fi
echo "host dependencies ready: $(docker version --format 'engine {{.Server.Version}}')"
