#!/usr/bin/env bash
# Build a local Debian base image from debootstrap, for builders that cannot
# pull from a registry (air-gapped or engine-less machines). The Dockerfile
# then uses it through --build-arg BASE_IMAGE=<tag>.
#
# usage: docker/make-base-image.sh [TAG] [SUITE] [MIRROR]
#   TAG     default localhost/debian:bookworm
#   SUITE   default bookworm
#   MIRROR  default: the first Debian mirror apt on this host already uses
set -euo pipefail

tag=${1:-localhost/debian:bookworm}
suite=${2:-bookworm}
mirror=${3:-}
storage=(--storage-driver "${BUILDAH_STORAGE_DRIVER:-vfs}")

if [[ -z "$mirror" ]]; then
    mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | grep -vE '^\s*#' | grep -oE 'https?://[^ ]+/debian/?$|https?://[^ ]+/debian/? ' | head -n1 | tr -d ' ' || true)
    mirror=${mirror:-http://deb.debian.org/debian}
fi

for tool in debootstrap buildah; do
    command -v "$tool" >/dev/null || { echo "error: $tool not found (apt-get install -y buildah debootstrap)" >&2; exit 2; }
done

if buildah "${storage[@]}" inspect --type image "$tag" >/dev/null 2>&1; then
    echo "base image $tag already exists"
    exit 0
fi

rootfs=$(mktemp -d /tmp/rootfs.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT
echo "debootstrap --variant=minbase $suite from $mirror"
if ! debootstrap --variant=minbase "$suite" "$rootfs" "$mirror" >"$rootfs.log" 2>&1; then
    tail -n 20 "$rootfs.log" >&2
    exit 1
fi
rm -f "$rootfs.log"
# Keep the image small: no apt lists or caches in the base layer.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin

ctr=$(buildah "${storage[@]}" from scratch)
buildah "${storage[@]}" copy "$ctr" "$rootfs" / >/dev/null
buildah "${storage[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --cmd /bin/bash "$ctr"
buildah "${storage[@]}" commit --rm "$ctr" "$tag" >/dev/null
echo "built $tag"
