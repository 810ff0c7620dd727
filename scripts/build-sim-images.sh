#!/usr/bin/env bash
# Build the images the simulated Pi needs, without any container registry:
#   pi5-sim:bookworm, pi5-sim:trixie  systemd as PID 1, python3, like a fresh
#                                     64-bit Raspberry Pi OS Lite (Debian 12/13); PI5_SIM_IMAGE
#                                     names them otherwise (a checkout that changes this
#                                     script builds its own, for molecule's scenarios to use)
#   pi5-sim-python:3.11               stand-in for the official python:3.11-slim
#                                     base image a real Pi pulls for the backend,
#                                     also saved to .cache/images/ for the Pi to load
#   pi5-sim-python:3.11-arm64         the same for arm64 (the emulated Pi of `make arm64`; only on
#                                     request: built under qemu-user unless this machine is arm64)
# Each image is debootstrapped from Debian's mirror and `docker import`ed. It is
# rebuilt only when this script or its suite changes (label pi5sim.inputs).
# Usage: build-sim-images.sh [bookworm] [trixie] [python] [python-arm64]   (default: all but python-arm64)
set -euo pipefail

mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
archive_dir="$(cd "$(dirname "$0")/.." && pwd)/.cache/images"
self_hash=$(sha256sum "$0" | cut -c1-16)
workdir=$(mktemp -d /var/tmp/pi5sim.XXXXXX)
trap 'rm -rf "$workdir"' EXIT

pi_packages=systemd,systemd-sysv,dbus,python3,python3-apt,sudo,iproute2,procps,ca-certificates,curl,gnupg,locales,tzdata
python_packages=python3,python3-venv,ca-certificates

image_is_current() {  # image inputs-hash
  [[ "$(docker image inspect -f '{{ index .Config.Labels "pi5sim.inputs" }}' "$1" 2>/dev/null)" == "$2" ]]
}

bootstrap() {  # suite rootfs packages [arch]
  debootstrap --arch="${4:-$(dpkg --print-architecture)}" --variant=minbase --include="$3" "$1" "$2" "$mirror" >"$2.log" 2>&1 \
    || { tail -n 30 "$2.log" >&2; echo "debootstrap of $1 failed" >&2; return 1; }
  rm -rf "$2"/var/cache/apt/archives/*.deb "$2"/var/lib/apt/lists/*
  # An empty package list must look stale, or apt's cache_valid_time skips the update.
  touch -d @0 "$2/var/lib/apt/lists"
}

build_pi() {  # suite
  local suite=$1 tag="${PI5_SIM_IMAGE:-pi5-sim}:$1" inputs="$self_hash-$1" rootfs="$workdir/$1"
  if image_is_current "$tag" "$inputs"; then echo "$tag is current"; return; fi
  echo "building $tag from Debian $suite"
  bootstrap "$suite" "$rootfs" "$pi_packages"
  echo "deb $mirror $suite main" >"$rootfs/etc/apt/sources.list"
  : >"$rootfs/etc/machine-id"
  # Units that need real hardware or a console; they only fail in a container.
  for unit in getty@tty1.service systemd-udevd.service systemd-remount-fs.service \
              systemd-firstboot.service console-getty.service; do
    ln -sf /dev/null "$rootfs/etc/systemd/system/$unit"
  done
  # /proc/sys is read-only in a container, so Docker 26+ (trixie) cannot turn
  # IPv6 off on its containers' interfaces; a real Pi can. Docker's own escape hatch:
  mkdir -p "$rootfs/etc/systemd/system/docker.service.d"
  printf '[Service]\nEnvironment=DOCKER_ALLOW_IPV6_ON_IPV4_INTERFACE=1\n' \
    >"$rootfs/etc/systemd/system/docker.service.d/pi5-sim.conf"
  tar -C "$rootfs" -c . | docker import \
    -c 'ENV container=docker' \
    -c 'CMD ["/lib/systemd/systemd"]' \
    -c "LABEL pi5sim.inputs=$inputs" - "$tag" >/dev/null
  echo "built $tag"
}

save_python_archive() {  # tag archive; the Pi's engine cannot pull: the backend role loads this
  local tag=$1 archive="$archive_dir/$2"
  if [[ -f "$archive" && "$(cat "$archive.id" 2>/dev/null)" == "$(docker image inspect -f '{{.Id}}' "$tag")" ]]; then
    return
  fi
  mkdir -p "$archive_dir"
  docker save "$tag" -o "$archive.tmp" && mv "$archive.tmp" "$archive"
  docker image inspect -f '{{.Id}}' "$tag" >"$archive.id"
  echo "saved $tag to $archive"
}

build_python() {  # [arch]: this machine's when empty
  local arch=${1:-} tag="pi5-sim-python:3.11${1:+-$1}" inputs="$self_hash-python${1:+-$1}" rootfs="$workdir/python${1:+-$1}"
  local archive="pi5-sim-python-3.11${1:+-$1}.tar"
  if image_is_current "$tag" "$inputs"; then echo "$tag is current"; save_python_archive "$tag" "$archive"; return; fi
  echo "building $tag from Debian bookworm"
  bootstrap bookworm "$rootfs" "$python_packages" "$arch"
  ln -sf /usr/bin/python3 "$rootfs/usr/local/bin/python"
  if [[ -z $arch ]]; then
    tar -C "$rootfs" -c . | docker import \
      -c 'CMD ["python3"]' -c "LABEL pi5sim.inputs=$inputs" - "$tag" >/dev/null
  else
    # docker import records this machine's architecture whatever --platform says (Docker 20.10);
    # a build FROM scratch records the one asked for.
    mkdir "$rootfs.context"
    tar -C "$rootfs" -cf "$rootfs.context/rootfs.tar" .
    printf 'FROM scratch\nADD rootfs.tar /\nCMD ["python3"]\nLABEL pi5sim.inputs=%s\n' "$inputs" \
      | DOCKER_BUILDKIT=0 docker build -q --platform "linux/$arch" -t "$tag" -f - "$rootfs.context" >/dev/null
  fi
  echo "built $tag"
  save_python_archive "$tag" "$archive"
}

targets=("$@")
((${#targets[@]})) || targets=(bookworm trixie python)
pids=()
for target in "${targets[@]}"; do
  case "$target" in
    bookworm|trixie) build_pi "$target" & pids+=($!) ;;
    python) build_python & pids+=($!) ;;
    python-arm64) build_python arm64 & pids+=($!) ;;
    *) echo "unknown image '$target' (expected bookworm, trixie, python or python-arm64)" >&2; exit 2 ;;
  esac
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
exit "$status"
