#!/usr/bin/env bash
# Build the emulated Raspberry Pi 5 of `make arm64` from Debian's packages only:
#   .cache/arm64/<suite>-<inputs>/disk.qcow2   64-bit Debian (Raspberry Pi OS's base) as a fresh
#                                              Raspberry Pi OS Lite has it: user pi with passwordless
#                                              sudo and an SSH key, systemd, python3, openssh-server
#   .../vmlinuz, .../initrd.img                Debian's linux-image-arm64 for direct kernel boot; the
#                                              initrd holds only the virtio and ext4 modules
#   .cache/arm64/ssh/                          the throwaway key of `pi`, the VM's host keys, known_hosts
# The root file system is debootstrapped for arm64 and configured under qemu-user (binfmt_misc), then
# written to an ext4 disk. The result is cached, keyed by a hash of this script, its settings, the
# machine's CA certificates and the SSH keys; a change to any of them builds a new image.
# Usage: build-arm64-image.sh           build unless a current image exists; print its directory
#        build-arm64-image.sh --check   print the current image's directory, or say how to build it (exit 1)
# Settings (environment): PI5_ARM64_SUITE (bookworm), PI5_ARM64_DISK_GB (16), DEBIAN_MIRROR.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
suite=${PI5_ARM64_SUITE:-bookworm}
disk_gb=${PI5_ARM64_DISK_GB:-16}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
cache="$root/.cache/arm64"
ssh_dir="$cache/ssh"
# The machine's own CA certificates: the VM reaches HTTPS package indexes through the same egress.
ca_dir=/usr/local/share/ca-certificates
build_command="sudo make -C $root arm64-image"
host_alias=pi5-arm64

packages=systemd,systemd-sysv,systemd-timesyncd,udev,dbus,kmod,openssh-server,sudo,python3,python3-apt,iproute2,
packages+=procps,ca-certificates,curl,gnupg,locales,tzdata,netbase,less,initramfs-tools,linux-image-arm64
# The initrd only has to find the virtio disk and mount ext4; the root file system has every module.
initrd_modules=(virtio_pci virtio_blk ext4)
image_files=(disk.qcow2 vmlinuz initrd.img cmdline)

die() { echo "build-arm64-image: $*" >&2; exit 1; }

# The throwaway SSH material: made once, then an input of the image (a new key means a new image).
make_ssh_keys() {
  [[ -f $ssh_dir/id_ed25519 && -f $ssh_dir/known_hosts ]] && return
  rm -rf "$ssh_dir"
  mkdir -p "$ssh_dir/host"
  ssh-keygen -q -t ed25519 -N '' -C "pi@$host_alias" -f "$ssh_dir/id_ed25519"
  for type in ed25519 ecdsa rsa; do
    ssh-keygen -q -t "$type" -N '' -C "root@$host_alias" -f "$ssh_dir/host/ssh_host_${type}_key"
  done
  # Ansible connects with HostKeyAlias=pi5-arm64: the forwarded port changes, the host key does not.
  echo "$host_alias $(cut -d' ' -f1,2 "$ssh_dir/host/ssh_host_ed25519_key.pub")" >"$ssh_dir/known_hosts"
}

inputs_hash() {
  {
    sha256sum "$0" | cut -d' ' -f1
    echo "suite=$suite disk_gb=$disk_gb"
    cat "$ssh_dir/id_ed25519.pub" "$ssh_dir"/host/*.pub 2>/dev/null || true
    cat "$ca_dir"/*.crt 2>/dev/null || true
  } | sha256sum | cut -c1-16
}

# A complete image has every file, and each matches the checksum written last by the build.
check_image() {  # dir
  local dir=$1 file
  [[ -d $dir ]] || { echo "no image for these inputs ($dir is missing)"; return 1; }
  [[ -f $dir/SHA256SUMS ]] || { echo "$dir is incomplete (an interrupted build: no SHA256SUMS)"; return 1; }
  for file in "${image_files[@]}"; do
    [[ -s $dir/$file ]] || { echo "$dir/$file is missing or empty"; return 1; }
  done
  (cd "$dir" && sha256sum --quiet -c SHA256SUMS >/dev/null 2>&1) || { echo "$dir does not match its SHA256SUMS (damaged)"; return 1; }
}

check() {
  local dir problem
  [[ -f $ssh_dir/id_ed25519 && -f $ssh_dir/known_hosts ]] \
    || die "no emulated Pi image: its SSH keys ($ssh_dir) are missing. Build it with: $build_command"
  dir="$cache/$suite-$(inputs_hash)"
  if ! problem=$(check_image "$dir"); then
    die "the emulated Pi's disk image is not usable: $problem. Build it (about 15 min) with: $build_command"
  fi
  echo "$dir"
}

# arm64 programs must run here for the packages' scripts: natively, or through qemu-user's binfmt handler.
check_arm64_exec() {
  [[ $(uname -m) == aarch64 ]] && return
  [[ $(cat /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null | head -n 1) == enabled ]] \
    || die "this machine cannot run arm64 programs (no qemu-aarch64 binfmt handler). Install it with: sudo bash $root/scripts/install-host-deps.sh arm64"
}

in_root() { chroot "$rootfs" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"; }

configure_rootfs() {
  local kernel_version
  # Services must not start inside the chroot (sshd would listen on this machine's port 22).
  printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
  chmod 0755 "$rootfs/usr/sbin/policy-rc.d"
  # initramfs-tools reads these when the kernel's postinst builds the initrd: only the listed modules,
  # which keeps the build under emulation to seconds instead of the minutes MODULES=most takes.
  mkdir -p "$rootfs/etc/initramfs-tools/conf.d" "$rootfs/etc/initramfs-tools/hooks"
  printf 'MODULES=list\nCOMPRESS=gzip\n' >"$rootfs/etc/initramfs-tools/conf.d/pi5-arm64-vm"
  {
    printf '#!/bin/sh\n[ "$1" = prereqs ] && exit 0\n. /usr/share/initramfs-tools/hook-functions\n'
    printf 'force_load %s\n' "${initrd_modules[@]}"
  } >"$rootfs/etc/initramfs-tools/hooks/pi5-arm64-vm"
  chmod 0755 "$rootfs/etc/initramfs-tools/hooks/pi5-arm64-vm"
  mkdir -p "$rootfs/usr/local/share/ca-certificates"
  cp "$ca_dir"/*.crt "$rootfs/usr/local/share/ca-certificates/" 2>/dev/null || true
  mkdir -p "$rootfs/etc/ssh"
  cp "$ssh_dir"/host/ssh_host_* "$rootfs/etc/ssh/"
  chmod 0600 "$rootfs"/etc/ssh/ssh_host_*_key

  echo "installing the packages under emulation (debootstrap's second stage)"
  in_root /debootstrap/debootstrap --second-stage >"$workdir/second-stage.log" 2>&1 \
    || { tail -n 40 "$rootfs/debootstrap/debootstrap.log" "$workdir/second-stage.log" >&2; die "debootstrap's second stage failed"; }
  in_root update-ca-certificates >/dev/null

  # What Raspberry Pi Imager leaves on a card: the user pi, sudo without a password, an SSH key.
  in_root useradd --create-home --shell /bin/bash --groups sudo,adm,users pi
  in_root passwd --lock pi >/dev/null
  echo 'pi ALL=(ALL) NOPASSWD: ALL' >"$rootfs/etc/sudoers.d/010_pi-nopasswd"
  chmod 0440 "$rootfs/etc/sudoers.d/010_pi-nopasswd"
  install -d -m 0700 -o 1000 -g 1000 "$rootfs/home/pi/.ssh"
  install -m 0600 -o 1000 -g 1000 "$ssh_dir/id_ed25519.pub" "$rootfs/home/pi/.ssh/authorized_keys"

  echo raspberrypi >"$rootfs/etc/hostname"
  printf '127.0.0.1\tlocalhost\n127.0.1.1\traspberrypi\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >"$rootfs/etc/hosts"
  echo '/dev/vda / ext4 defaults 0 1' >"$rootfs/etc/fstab"
  echo "deb $mirror $suite main" >"$rootfs/etc/apt/sources.list"
  # QEMU's user network: a fixed address, its gateway and its DNS forwarder (no DHCP wait at boot).
  mkdir -p "$rootfs/etc/systemd/network"
  printf '[Match]\nName=eth0\n\n[Network]\nAddress=10.0.2.15/24\nGateway=10.0.2.2\nDNS=10.0.2.3\n' \
    >"$rootfs/etc/systemd/network/10-eth0.network"
  echo 'nameserver 10.0.2.3' >"$rootfs/etc/resolv.conf"
  in_root systemctl enable systemd-networkd.service >/dev/null 2>&1
  : >"$rootfs/etc/machine-id"
  rm -f "$rootfs/usr/sbin/policy-rc.d"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs/debootstrap"
  # An empty package list must look stale, or apt's cache_valid_time skips the update.
  touch -d @0 "$rootfs/var/lib/apt/lists"

  kernel_version=$(basename "$(ls -d "$rootfs"/lib/modules/*)")
  cp "$rootfs/boot/vmlinuz-$kernel_version" "$out/vmlinuz"
  cp "$rootfs/boot/initrd.img-$kernel_version" "$out/initrd.img"
  # net.ifnames=0: eth0, as on a Pi.
  echo "root=/dev/vda rootfstype=ext4 rw console=ttyAMA0 net.ifnames=0" >"$out/cmdline"
  echo "$kernel_version" >"$out/kernel-version"
}

build() {
  local dir
  [[ $EUID == 0 ]] || die "building the image needs root (debootstrap, chroot). Run: $build_command"
  for tool in debootstrap mkfs.ext4 qemu-img ssh-keygen; do
    command -v "$tool" >/dev/null || die "$tool is missing. Install the tools with: sudo bash $root/scripts/install-host-deps.sh arm64"
  done
  check_arm64_exec
  make_ssh_keys
  dir="$cache/$suite-$(inputs_hash)"
  if check_image "$dir" >/dev/null; then echo "$dir"; return; fi
  echo "building the emulated Pi's image ($suite, arm64) in $dir" >&2
  rm -rf "$dir"
  out="$dir.tmp"
  workdir=$(mktemp -d /var/tmp/pi5arm64.XXXXXX)
  rootfs="$workdir/rootfs"
  trap 'rm -rf "$workdir" "$out"' EXIT
  rm -rf "$out" && mkdir -p "$out"
  {
    debootstrap --arch=arm64 --foreign --variant=minbase --include="$packages" "$suite" "$rootfs" "$mirror" \
      >"$workdir/first-stage.log" 2>&1 || { tail -n 30 "$workdir/first-stage.log"; die "debootstrap of $suite (arm64) failed"; }
    configure_rootfs
    echo "writing the ${disk_gb} GiB disk"
    mkfs.ext4 -q -L rootfs -d "$rootfs" "$workdir/disk.raw" "${disk_gb}G"
    qemu-img convert -f raw -O qcow2 "$workdir/disk.raw" "$out/disk.qcow2"
    (cd "$out" && sha256sum "${image_files[@]}" >SHA256SUMS)
  } >&2
  mv "$out" "$dir"
  # Images for other inputs are stale now.
  find "$cache" -mindepth 1 -maxdepth 1 -type d -name "$suite-*" ! -path "$dir" -exec rm -rf {} +
  echo "built $dir" >&2
  echo "$dir"
}

case "${1:-}" in
  --check) check ;;
  "") build ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac
