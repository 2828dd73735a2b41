#!/usr/bin/env bash
# Makes the base image tre's Dockerfile copies its runtime files from
# (glibc, libstdc++, CA certificates), with no container registry: a
# minimal Debian bookworm from Debian's own package archive (debootstrap),
# imported into the local image store. Does nothing when the image exists,
# so CI builds it once per machine.
#
#   deploy/image/base.sh [IMAGE]        default tre-base:bookworm
#
# Needs root (debootstrap) and debootstrap itself (apt-get install
# debootstrap). Where a registry exists, skip this and build with
# --build-arg BASE=debian:bookworm-slim instead.
set -euo pipefail
image="${1:-tre-base:bookworm}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

if docker image inspect "$image" >/dev/null 2>&1; then
  echo "base image $image exists"
  exit 0
fi
if ! command -v debootstrap >/dev/null 2>&1; then
  echo "debootstrap is not installed (apt-get install debootstrap)" >&2
  exit 1
fi
root=$(mktemp -d /tmp/tre-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
echo "building base image $image with debootstrap from $mirror"
start=$(date +%s)
debootstrap --variant=minbase --include=ca-certificates bookworm "$root/rootfs" "$mirror" >"$root/log" 2>&1 || {
  tail -20 "$root/log" >&2
  exit 1
}
# Package lists and caches are not needed in an image no one runs apt in.
rm -rf "$root/rootfs/var/cache/apt/archives/"*.deb "$root/rootfs/var/lib/apt/lists/"*
tar -C "$root/rootfs" --numeric-owner -c . | docker import \
  --change 'CMD ["/bin/bash"]' \
  --message "debootstrap --variant=minbase --include=ca-certificates bookworm" - "$image" >/dev/null
echo "base image $image built in $(( $(date +%s) - start ))s"
