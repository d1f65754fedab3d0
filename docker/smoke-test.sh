#!/usr/bin/env bash
# Smoke-test a built liar-export image: entrypoint, non-root user, OCI labels,
# `liar-export --help` / `--version`, and tiny real exports verified inside the image (docker/smoke.py:
# a Llama to HF + GGUF, a Qwen3 to GGUF, a BERT encoder to GGUF + ONNX when the image has encoders).
#
# usage: docker/smoke-test.sh IMAGE        (ENGINE=docker|buildah to force an engine)
set -euo pipefail
cd "$(dirname "$0")/.."
image=${1:?usage: docker/smoke-test.sh IMAGE}
version=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' toolchain/__init__.py)

engine=${ENGINE:-}
if [[ -z "$engine" ]]; then
    if command -v docker >/dev/null && docker info >/dev/null 2>&1; then engine=docker; else engine=buildah; fi
fi
fail() { echo "smoke: FAIL $*" >&2; exit 1; }
mounts=(-v "$PWD/docker/smoke.py:/smoke/smoke.py:ro" -v "$PWD/tests/tiny.py:/smoke/tiny.py:ro"
        -v "$PWD/tests/families.py:/smoke/families.py:ro")

if [[ "$engine" == docker ]]; then
    inspect() { docker image inspect --format "$1" "$image"; }
    run_cmd() { docker run --rm "${mounts[@]}" --entrypoint "$1" "$image" "${@:2}"; }
    entrypoint_run() { docker run --rm "$image" "$@"; }
else
    bah=(buildah --storage-driver "${BUILDAH_STORAGE_DRIVER:-vfs}")
    ctr=$("${bah[@]}" from --pull-never "$image")
    trap '"${bah[@]}" rm "$ctr" >/dev/null' EXIT
    inspect() { "${bah[@]}" inspect --type image --format "$1" "$image"; }
    run_cmd() { "${bah[@]}" run --isolation chroot "${mounts[@]}" "$ctr" -- "$@"; }
    # buildah run ignores ENTRYPOINT/CMD: rebuild the command line from the image config.
    entrypoint_run() {
        local ep
        ep=$(inspect '{{range .OCIv1.Config.Entrypoint}}{{.}} {{end}}')
        "${bah[@]}" run --isolation chroot "$ctr" -- $ep "$@"
    }
fi

if [[ "$engine" == docker ]]; then cfg=.Config; else cfg=.OCIv1.Config; fi
ep=$(inspect "{{range $cfg.Entrypoint}}{{.}} {{end}}")
user=$(inspect "{{$cfg.User}}")
labels=$(inspect "{{range \$k, \$v := $cfg.Labels}}{{\$k}}={{\$v}} {{end}}")
[[ "$ep" == "liar-export " ]] || fail "entrypoint is '$ep', want liar-export"
echo "smoke: ok   entrypoint $ep"
[[ -n "$user" && "$user" != root && "$user" != 0 ]] || fail "image runs as root (User='$user')"
uid=$(run_cmd id -u); [[ "$uid" != 0 ]] || fail "id -u is 0 inside the image"
echo "smoke: ok   non-root user $user (uid $uid)"
grep -qE "(^| )org.opencontainers.image.revision=[^ ]" <<<"$labels" || fail "revision label missing or empty: $labels"
grep -qE "(^| )org.opencontainers.image.version=$version " <<<"$labels" || fail "version label is not $version: $labels"
echo "smoke: ok   OCI labels $labels"

help=$(entrypoint_run --help) || fail "liar-export --help exited non-zero"
grep -q "usage: liar-export" <<<"$help" || fail "--help shows no usage"
grep -q "examples:" <<<"$help" || fail "--help shows no examples"
echo "smoke: ok   liar-export --help"
got=$(entrypoint_run --version) || fail "liar-export --version exited non-zero"
[[ "$got" == "liar-export $version" ]] || fail "--version printed '$got', want 'liar-export $version'"
echo "smoke: ok   liar-export --version -> $got"

start=$SECONDS
run_cmd python /smoke/smoke.py || fail "tiny exports"
echo "smoke: ok   tiny exports in $((SECONDS - start)) s"
echo "smoke: PASS $image"
