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
trixie_packages=cloud-init,openssh-server
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

# What Raspberry Pi OS Lite has beyond Debian, as far as files go (README, "differs from a real Pi"):
# the boot partition as Raspberry Pi Imager leaves it, a device tree for a Pi 5 (bookworm) and a
# Compute Module 5 (trixie) where pi_base_device_tree_dir points (sysfs cannot be faked in a
# container), and the Raspberry Pi archive's source entry with its origin, served from a local
# empty archive because archive.raspberrypi.com is out of reach here.
raspberry_pi_os() {  # suite rootfs
  local suite=$1 rootfs=$2 arch tree=$2/usr/lib/pi5-sim/device-tree archive=/usr/lib/pi5-sim/raspberrypi-archive
  arch=$(dpkg --print-architecture)
  mkdir -p "$rootfs/boot/firmware" "$tree"
  cat >"$rootfs/boot/firmware/config.txt" <<'CONFIG'
# For more options and information see
# http://rptl.io/configtxt
# Some settings may impact device functionality. See link above for details

# Uncomment some or all of these to enable the optional hardware interfaces
#dtparam=i2c_arm=on
#dtparam=i2s=on
#dtparam=spi=on

# Enable audio (loads snd_bcm2835)
dtparam=audio=on

# Additional overlays and parameters are documented
# /boot/firmware/overlays/README

# Automatically load overlays for detected cameras
camera_auto_detect=1

# Automatically load overlays for detected DSI displays
display_auto_detect=1

# Automatically load initramfs files, if found
auto_initramfs=1

# Enable DRM VC4 V3D driver
dtoverlay=vc4-kms-v3d
max_framebuffers=2

# Don't have the firmware create an initial video= setting in cmdline.txt.
# Use the kernel's default instead.
disable_fw_kms_setup=1

# Run in 64-bit mode
arm_64bit=1

# Disable compensation for displays with overscan
disable_overscan=1

# Run as fast as firmware / board allows
arm_boost=1

[cm4]
# Enable host mode on the 2711 built-in XHCI USB controller.
# This line should be removed if the legacy DWC2 controller is required
# (e.g. for USB device mode) or if USB support is not required.
otg_mode=1

[cm5]
dtoverlay=dwc2,dr_mode=host

[all]
CONFIG
  echo "console=serial0,115200 console=tty1 root=PARTUUID=4e639091-02 rootfstype=ext4 fsck.repair=yes rootwait cfg80211.ieee80211_regdom=GB" \
    >"$rootfs/boot/firmware/cmdline.txt"
  if [[ $suite == bookworm ]]; then
    printf 'Raspberry Pi 5 Model B Rev 1.0\0' >"$tree/model"
    printf 'raspberrypi,5-model-b\0brcm,bcm2712\0' >"$tree/compatible"
  else
    printf 'Raspberry Pi Compute Module 5 Rev 1.0\0' >"$tree/model"
    printf 'raspberrypi,5-compute-module\0brcm,bcm2712\0' >"$tree/compatible"
  fi
  # Raspberry Pi OS's firmware tools, as stand-ins (no VideoCore or EEPROM here): a cool Pi 5 with
  # power to spare and a current bootloader, so the role's eeprom and health-log paths run.
  printf '%s\n' '#!/bin/sh' '# Stand-in of the simulated Pi (scripts/build-sim-images.sh).' 'case "$1" in' \
    '  get_throttled) echo throttled=0x0 ;;' "  measure_temp) echo \"temp=48.3'C\" ;;" \
    '  *) echo "error=1 error_msg=\"Command not registered\""; exit 255 ;;' 'esac' >"$rootfs/usr/bin/vcgencmd"
  printf '%s\n' '#!/bin/sh' '# Stand-in of the simulated Pi (scripts/build-sim-images.sh): always current.' \
    'echo "BOOTLOADER: up to date"' 'echo "   CURRENT: Mon  9 Sep 14:19:26 UTC 2024 (1725891566)"' \
    'echo "    LATEST: Mon  9 Sep 14:19:26 UTC 2024 (1725891566)"' >"$rootfs/usr/bin/rpi-eeprom-update"
  # rpi-eeprom-config prints the bootloader's settings (a Pi 5's factory ones: SD card first) and --apply
  # takes new ones; here a file stands for the EEPROM (a real Pi flashes them at the next boot).
  mkdir -p "$rootfs/var/lib/pi5-sim"
  printf '[all]\nBOOT_UART=1\nPOWER_OFF_ON_HALT=0\nBOOT_ORDER=0xf461\n' >"$rootfs/var/lib/pi5-sim/eeprom.conf"
  printf '%s\n' '#!/bin/sh' '# Stand-in of the simulated Pi (scripts/build-sim-images.sh): the EEPROM is a file.' 'set -e' \
    'eeprom=/var/lib/pi5-sim/eeprom.conf' 'case "$1" in' '  "") cat "$eeprom" ;;' \
    '  -a|--apply) grep -q "^BOOT_ORDER=0x[0-9a-fA-F]*$" "$2"; cp "$2" "$eeprom"; echo "EEPROM update pending. Please reboot to apply the update." ;;' \
    '  *) echo "rpi-eeprom-config (stand-in): unsupported arguments: $*" >&2; exit 2 ;;' 'esac' \
    >"$rootfs/usr/bin/rpi-eeprom-config"
  chmod 0755 "$rootfs/usr/bin/vcgencmd" "$rootfs/usr/bin/rpi-eeprom-update" "$rootfs/usr/bin/rpi-eeprom-config"
  # Raspberry Pi OS's stock /etc/hostname and /etc/hosts. Docker bind-mounts its own over them (its
  # runtime owns the host name there), over empty files of its own; a Pi owns both, and cloud-init and
  # the role write them: drop Docker's at every boot, and put the stock ones in on the first.
  mkdir -p "$rootfs/usr/lib/pi5-sim/etc"
  echo raspberrypi >"$rootfs/usr/lib/pi5-sim/etc/hostname"
  printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\nff02::1\t\tip6-allnodes\nff02::2\t\tip6-allrouters\n\n127.0.1.1\traspberrypi\n' \
    >"$rootfs/usr/lib/pi5-sim/etc/hosts"
  cat >"$rootfs/etc/systemd/system/pi5-sim-own-hostname.service" <<'UNIT'
[Unit]
Description=Simulated Pi: own /etc/hostname and /etc/hosts, as a Pi does (Docker bind-mounts them)
DefaultDependencies=no
Before=local-fs.target cloud-init-local.service systemd-hostnamed.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'for f in hostname hosts; do while umount /etc/$f 2>/dev/null; do :; done; [ -s /etc/$f ] || cp /usr/lib/pi5-sim/etc/$f /etc/$f; done'

[Install]
WantedBy=local-fs.target
UNIT
  mkdir -p "$rootfs/etc/systemd/system/local-fs.target.wants"
  ln -sf ../pi5-sim-own-hostname.service "$rootfs/etc/systemd/system/local-fs.target.wants/"
  if [[ $suite == trixie ]]; then imager_first_boot "$rootfs"; fi
  # An archive with the Raspberry Pi archive's Release fields (Origin and Label are what
  # unattended-upgrades matches) and one package entry that nothing installs (apt keeps no list of an
  # empty archive); a real Pi has http://archive.raspberrypi.com/debian/.
  local packages="$rootfs$archive/dists/$suite/main/binary-$arch/Packages"
  mkdir -p "${packages%/*}"
  printf '%s\n' 'Package: pi5-sim-archive-marker' 'Version: 1' 'Architecture: all' \
    'Maintainer: pi5-streaming <nobody@invalid>' 'Filename: pool/main/p/pi5-sim-archive-marker_1_all.deb' \
    'Size: 0' 'SHA256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855' \
    'Description: marks the simulated Pi'"'"'s stand-in of the Raspberry Pi archive (not installable)' '' >"$packages"
  cat >"$rootfs$archive/dists/$suite/Release" <<RELEASE
Origin: Raspberry Pi Foundation
Label: Raspberry Pi Foundation
Suite: $suite
Codename: $suite
Date: Sat, 01 Nov 2025 00:00:00 UTC
Architectures: $arch
Components: main
Description: Raspberry Pi $suite repository (stand-in of the simulated Pi)
SHA256:
 $(sha256sum "$packages" | cut -d ' ' -f 1) $(stat -c %s "$packages") main/binary-$arch/Packages
RELEASE
  if [[ $suite == bookworm ]]; then
    echo "deb [trusted=yes] file:$archive $suite main" >"$rootfs/etc/apt/sources.list.d/raspi.list"
  else
    printf 'Types: deb\nURIs: file:%s\nSuites: %s\nComponents: main\nTrusted: yes\n' "$archive" "$suite" \
      >"$rootfs/etc/apt/sources.list.d/raspi.sources"
  fi
}

# trixie images configure their first boot with cloud-init (bookworm's with firstrun.sh): the NoCloud
# seed Raspberry Pi Imager writes on the boot partition, as its customisation generator makes it for a
# host name, a time zone, the user pi with an SSH key (no password) and SSH on. A real Pi finds the
# seed by the partition's label, which a container has not: the sim's config points at the directory.
imager_first_boot() {  # rootfs
  local rootfs=$1
  cat >"$rootfs/boot/firmware/user-data" <<'USERDATA'
#cloud-config
manage_resolv_conf: false

hostname: raspberrypi
manage_etc_hosts: true
packages:
- avahi-daemon

apt:
  preserve_sources_list: true
  conf: |
    Acquire {
      Check-Date "false";
    };

timezone: Europe/London
user:
  name: pi
  shell: /bin/bash
  lock_passwd: true
  ssh_authorized_keys:
    - "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFAKEfakeFAKEfakeFAKEfakeFAKEfakeFAKEfakeFAKE imager@pi5-sim"
  sudo: null

ssh_pwauth: false

runcmd:
  - [ systemctl, enable, --now, ssh ]
USERDATA
  # Imager's instance id is the time it wrote the card, in milliseconds.
  echo "instance-id: rpi-imager-1762000000000" >"$rootfs/boot/firmware/meta-data"
  printf '%s\n' 'network:' '  version: 2' >"$rootfs/boot/firmware/network-config"
  # The container's network is Docker's: cloud-init renders none.
  cat >"$rootfs/etc/cloud/cloud.cfg.d/99-pi5-sim.cfg" <<'CFG'
datasource_list: [NoCloud, None]
datasource:
  NoCloud:
    seedfrom: file:///boot/firmware/
network:
  config: disabled
CFG
}

build_pi() {  # suite
  local suite=$1 tag="${PI5_SIM_IMAGE:-pi5-sim}:$1" inputs="$self_hash-$1" rootfs="$workdir/$1"
  if image_is_current "$tag" "$inputs"; then echo "$tag is current"; return; fi
  echo "building $tag from Debian $suite"
  bootstrap "$suite" "$rootfs" "$pi_packages"
  echo "deb $mirror $suite main" >"$rootfs/etc/apt/sources.list"
  # Raspberry Pi OS Lite trixie has cloud-init (its first boot) and an SSH server (Imager turns it on);
  # apt resolves cloud-init's dependencies, which debootstrap's --include does not fully.
  if [[ $suite == trixie ]]; then
    chroot "$rootfs" sh -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -qq -y --no-install-recommends \
      ${trixie_packages//,/ } && apt-get clean" >"$rootfs.apt.log" 2>&1 || { tail -n 30 "$rootfs.apt.log" >&2; return 1; }
    rm -rf "$rootfs"/var/lib/apt/lists/*
    touch -d @0 "$rootfs/var/lib/apt/lists"
  fi
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
  raspberry_pi_os "$1" "$rootfs"
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
  local arch=${1:-} tag="pi5-sim-python:3.11${1:+-$1}" inputs="$python_hash-python${1:+-$1}" rootfs="$workdir/python${1:+-$1}"
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

# The python stand-in's inputs are its own functions, so a change to the Pi images leaves it (and the
# tag other checkouts share) alone.
python_hash=$({ declare -f bootstrap build_python save_python_archive; echo "$python_packages"; } | sha256sum | cut -c1-16)
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
