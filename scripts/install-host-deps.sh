#!/usr/bin/env bash
# What `make demo` and `make test` need on the machine itself, installed from
# Debian when missing: a Docker engine (the simulated Pis run in it), debootstrap
# (builds their images without a registry), the real nginx, curl, Chromium and
# redis-server the tests drive, Python's venv and Node.js (the toolchains), and the proxies the
# stream check is tested against. Idempotent and quick when nothing is missing.
# Installing needs root; otherwise it stops and prints the command to run.
# `install-host-deps.sh arm64` adds what `make arm64` needs: QEMU's full arm64
# machine, qemu-user with binfmt_misc (to configure arm64 root file systems
# here) and the disk tools.
set -euo pipefail

packages=(docker.io debootstrap nginx-light curl chromium ca-certificates iproute2 make openssl
          openssh-client python3-venv
          # The backend's tests start their own redis-server (password, loopback, a free port).
          redis-server
          # The stream check's third-party proxies (tests/third_party), all in bookworm's main archive.
          haproxy apache2 libapache2-mod-security2 lighttpd caddy)
if [[ ${1:-} == arm64 ]]; then
  packages+=(qemu-system-arm qemu-utils qemu-user-static binfmt-support e2fsprogs)
fi
# Tools that may come from elsewhere than Debian (a newer Node.js, Docker's own engine).
declare -A tools=([node]=nodejs [npm]=npm [docker]=docker.io)

missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
for tool in "${!tools[@]}"; do
  command -v "$tool" >/dev/null || missing+=("${tools[$tool]}")
done
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u | sed '/^$/d')
engine_down=false
docker info >/dev/null 2>&1 || engine_down=true
# arm64 programs run here through qemu-user (debootstrap's second stage for arm64).
no_arm64_exec=false
if [[ ${1:-} == arm64 && $(uname -m) != aarch64 ]] \
   && [[ $(head -n 1 /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null) != enabled ]]; then
  no_arm64_exec=true
fi

if ((${#missing[@]} == 0)) && ! $engine_down && ! $no_arm64_exec; then
  exit 0
fi
if ((EUID != 0)); then
  echo "This machine lacks what the tests need:" >&2
  ((${#missing[@]})) && echo "  Debian packages: ${missing[*]}" >&2
  $engine_down && echo "  a running Docker engine (docker info fails)" >&2
  $no_arm64_exec && echo "  a binfmt_misc handler for arm64 programs (qemu-aarch64)" >&2
  how="sudo make deps"
  [[ ${1:-} == arm64 ]] && how="sudo make arm64-image"
  echo "Install them as root, then run your command again:  $how" >&2
  exit 1
fi

if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # The tests run their own servers on loopback ports: keep the packages' services (several want
  # port 80) from starting on install, unless the machine already has a policy of its own.
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if $no_arm64_exec; then
  [[ -e /proc/sys/fs/binfmt_misc/register ]] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  update-binfmts --enable qemu-aarch64
fi

# The Debian nginx package starts a server on :80 on install; the tests run
# their own nginx processes on loopback ports, so the packaged one is stopped.
if command -v systemctl >/dev/null && systemctl is-active --quiet nginx 2>/dev/null; then
  systemctl stop nginx || true
fi
pkill -f "nginx: master process /usr/sbin/nginx" 2>/dev/null || true

if ! docker info >/dev/null 2>&1; then
  echo "starting dockerd"
  if command -v systemctl >/dev/null && systemctl start docker 2>/dev/null; then
    :
  else
    nohup dockerd >/var/log/dockerd.log 2>&1 &
  fi
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    sleep 1
  done
  docker info >/dev/null 2>&1 || { echo "dockerd did not start; see /var/log/dockerd.log" >&2; exit 1; }
fi
echo "host dependencies ready: $(docker version --format 'engine {{.Server.Version}}')"
