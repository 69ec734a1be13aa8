#!/usr/bin/env bash
# Build the lab's Debian 12 systemd base image locally when it is missing (there is no registry
# to pull from here). The tag is a hash of this script, so changing the package list rebuilds.
# Prints the image name on stdout; progress goes to stderr.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# What a fresh Debian server has, plus procps and dbus (testinfra's process checks, systemd's bus).
packages=systemd,systemd-sysv,python3,python3-apt,sudo,iproute2,ca-certificates,procps,dbus
tag=$(sha256sum "$here/image.sh" | cut -c1-12)
image="celery-fleet/debian12-systemd:$tag"

if docker image inspect "$image" >/dev/null 2>&1; then
  echo "$image"
  exit 0
fi

# Use the mirror this machine's apt already uses, and give the image the same sources.
mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1)
mirror=${mirror:-http://deb.debian.org/debian}
rootfs=$(mktemp -d /var/tmp/celery-fleet-rootfs.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT

echo "lab: debootstrap bookworm from $mirror (about a minute)" >&2
debootstrap --variant=minbase --include="$packages" bookworm "$rootfs" "$mirror" >&2
rm -f "$rootfs/etc/apt/sources.list"
cp /etc/apt/sources.list.d/debian.sources "$rootfs/etc/apt/sources.list.d/"
# Containers have no console to log in on, and these units only fail in them.
for unit in getty.target console-getty.service systemd-remount-fs.service; do
  ln -sf /dev/null "$rootfs/etc/systemd/system/$unit"
done
# Fresh package lists of every configured source, as a new server has after its install.
cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
chroot "$rootfs" apt-get update -qq >&2
rm -f "$rootfs/var/cache/apt/"*.bin "$rootfs/etc/resolv.conf"

tar -C "$rootfs" -c . | docker import \
  -c 'CMD ["/lib/systemd/systemd"]' -c 'ENV container=docker' \
  - "$image" >&2
echo "$image"
