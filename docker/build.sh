#!/usr/bin/env bash
# Build the liar-export image with docker (when an engine answers) or buildah.
#
# usage: docker/build.sh [TAG]            (default liar-export:VERSION-VARIANT)
# environment:
#   VARIANT=cpu|cuda         image flavour (default cpu)
#   BASE_IMAGE, RUNTIME_IMAGE   base images (air-gapped: docker/make-base-image.sh)
#   LOCAL_WHEELS=DIR         offer DIR/*.whl to pip (e.g. the CPU torch wheel)
#   TORCH_INDEX_URL=URL      extra index for torch (set it empty when unreachable)
#   PIP_CERT=FILE            CA bundle for pip behind a TLS-intercepting proxy
#   ENGINE=docker|buildah    force an engine
#   BUILD_RECORD=FILE        also write the build time, image size and load averages there (JSON)
# Every build output line is prefixed with the seconds since the build started.
set -euo pipefail
cd "$(dirname "$0")/.."

variant=${VARIANT:-cpu}
version=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' toolchain/__init__.py)
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
if [[ -n "$(git status --porcelain -- toolchain exporters benchmarks pyproject.toml Dockerfile 2>/dev/null)" ]]; then
    revision="$revision-dirty"
fi
tag=${1:-liar-export:$version-$variant}

args=(--build-arg "VARIANT=$variant" --build-arg "VERSION=$version" --build-arg "REVISION=$revision")
[[ -n "${BASE_IMAGE:-}" ]] && args+=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
[[ -n "${RUNTIME_IMAGE:-}" ]] && args+=(--build-arg "RUNTIME_IMAGE=$RUNTIME_IMAGE")
[[ -n "${TORCH_INDEX_URL+set}" ]] && args+=(--build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL")
[[ -n "${PIP_CERT:-}" && -s "$PIP_CERT" ]] && args+=(--secret "id=pip_cert,src=$PIP_CERT")

if [[ -n "${LOCAL_WHEELS:-}" ]]; then
    for whl in "$LOCAL_WHEELS"/*.whl; do
        [[ -e "$whl" ]] || continue
        # A hard link costs no space; fall back to a copy across file systems.
        ln -f "$whl" docker/wheels/ 2>/dev/null || cp -f "$whl" docker/wheels/
    done
fi

engine=${ENGINE:-}
if [[ -z "$engine" ]]; then
    if command -v docker >/dev/null && docker info >/dev/null 2>&1; then engine=docker; else engine=buildah; fi
fi

echo "building $tag with $engine (variant $variant, version $version, revision $revision, $(nproc) cores)"
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
start=$SECONDS
stamp() { while IFS= read -r line; do printf '[%5ds] %s\n' "$((SECONDS - start))" "$line"; done; }
if [[ "$engine" == docker ]]; then
    DOCKER_BUILDKIT=1 docker build --progress=plain "${args[@]}" -t "$tag" . 2>&1 | stamp
else
    buildah bud --isolation chroot --storage-driver "${BUILDAH_STORAGE_DRIVER:-vfs}" --layers \
        "${args[@]}" -t "$tag" -f Dockerfile . 2>&1 | stamp
fi
seconds=$((SECONDS - start))
load_end=$(cut -d' ' -f1-3 /proc/loadavg)
if [[ "$engine" == docker ]]; then
    size=$(docker image inspect --format '{{.Size}}' "$tag")
else
    size=$(buildah --storage-driver "${BUILDAH_STORAGE_DRIVER:-vfs}" images --format "{{.Size}}" "$tag")
fi
echo "built $tag in $seconds s, image size $size (load average $load_start at the start, $load_end at the end)"
if [[ -n "${BUILD_RECORD:-}" ]]; then
    python3 -c 'import datetime, json, sys
keys = ("tag", "engine", "variant", "version", "revision", "base_image", "build_seconds", "image_size",
        "cores", "loadavg_start", "loadavg_end")
rec = dict(zip(keys, sys.argv[2:]))
rec["build_seconds"], rec["cores"] = int(rec["build_seconds"]), int(rec["cores"])
rec["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
json.dump(rec, open(sys.argv[1], "w"), indent=1)' "$BUILD_RECORD" "$tag" "$engine" "$variant" "$version" \
        "$revision" "${BASE_IMAGE:-debian:bookworm-slim}" "$seconds" "$size" "$(nproc)" "$load_start" "$load_end"
    echo "wrote $BUILD_RECORD"
fi
