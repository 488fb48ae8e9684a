#!/bin/sh
# Makes the base image localhost/debian:bookworm for tests/node/Dockerfile and the daemon's
# Dockerfile without any image registry: debootstrap from the Debian mirror apt already uses,
# then `podman import`. Does nothing when the image exists (podman's store is the cache).
# Needs root, podman and debootstrap.
set -eu
IMAGE="${1:-localhost/debian:bookworm}"
if podman image exists "$IMAGE"; then
    echo "podman-base-image: $IMAGE exists"
    exit 0
fi
MIRROR=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
[ -n "$MIRROR" ] || MIRROR=$(awk '$1=="deb"{print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
[ -n "$MIRROR" ] || MIRROR=http://deb.debian.org/debian
ROOTFS=$(mktemp -d /tmp/kst-rootfs.XXXXXX)
trap 'rm -rf "$ROOTFS"' EXIT
echo "podman-base-image: debootstrap bookworm from $MIRROR (about 30 s)"
debootstrap --variant=minbase bookworm "$ROOTFS" "$MIRROR" >/dev/null
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
tar -C "$ROOTFS" -c . | podman import - "$IMAGE" >/dev/null
echo "podman-base-image: imported $IMAGE"
