#!/usr/bin/env bash
# The compose stack's images, with or without an image registry (`make images`).
#
#   spa-serving:cpu   the Dockerfile, on python:3.12-slim when a registry answers, else on a
#                     Debian base made here (debootstrap + `docker import`: about 2 minutes, once)
#   prometheus        prom/prometheus:v3.5.0 when a registry answers, else spa-prometheus:local
#                     (scripts/prometheus.Dockerfile: Debian's `prometheus` package, the repo's
#                     config and rules) on the local Debian base (without torch)
#
# Builds reach the package registries through the host's network (`--network host`); the local
# base trusts the host's CA bundle. Layers are cached: after a code change only the last layers
# of spa-serving run again (seconds). Writes the image names compose needs to
# .spa-cache/compose/images.env (SPA_BASE_IMAGE, SPA_PROMETHEUS_IMAGE).
#
# Environment: SPA_BASE_IMAGE=IMAGE    build on IMAGE (skips the registry probe)
#              SPA_LOCAL_BASE=1        make and use the local Debian base even if a registry answers
#              DEBIAN_MIRROR=URL       debootstrap's mirror (default: the host's apt source)
set -euo pipefail
cd "$(dirname "$0")/.."

LOCAL_BASE=spa-base:bookworm
LOCAL_OS=spa-base:bookworm-os
REGISTRY_BASE=python:3.12-slim
REGISTRY_PROMETHEUS=prom/prometheus:v3.5.0
LOCAL_PROMETHEUS=spa-prometheus:local
STATE=.spa-cache/compose
mkdir -p "$STATE"

say() { echo "[images $(date +%T)] $*"; }
has_image() { docker image inspect "$1" >/dev/null 2>&1; }
pull() { has_image "$1" || timeout 60 docker pull -q "$1" >/dev/null 2>&1; }

# The first deb URI of the host's apt sources (deb822 or one-line format).
host_mirror() {
    local uri
    uri=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -v security | head -n1)
    [ -n "$uri" ] || uri=$(grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
        | awk '{print $2}' | grep -v security | head -n1)
    echo "${uri:-http://deb.debian.org/debian}"
}

# A minimal Debian bookworm with Python 3.11 in a venv at /opt/venv (on PATH, so `pip` and
# `python` mean what they mean in python:3.12-slim), imported as $LOCAL_OS.
make_local_os() {
    has_image "$LOCAL_OS" && return
    command -v debootstrap >/dev/null || { echo "debootstrap is missing: apt-get install -y debootstrap" >&2; exit 2; }
    local mirror rootfs t0=$SECONDS
    mirror=${DEBIAN_MIRROR:-$(host_mirror)}
    rootfs=$(mktemp -d /tmp/spa-rootfs.XXXXXX)
    say "no registry: making a Debian base with debootstrap from $mirror (about 2-4 minutes, once)"
    nice -n 10 debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$rootfs" "$mirror" >"$STATE/debootstrap.log" 2>&1 \
        || { tail -n 20 "$STATE/debootstrap.log" >&2; rm -rf "$rootfs"; exit 1; }
    chroot "$rootfs" python3 -m venv /opt/venv
    chroot "$rootfs" /opt/venv/bin/pip --version >/dev/null
    # daemons' maintainer scripts must not try to start services inside an image build
    printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
    chmod 755 "$rootfs/usr/sbin/policy-rc.d"
    local ca_env=()
    if [ -s /etc/ssl/certs/ca-certificates.crt ]; then  # the host's trust, e.g. a proxy's CA
        cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/host-ca-bundle.crt"
        ca_env=(--change "ENV SSL_CERT_FILE=/etc/ssl/host-ca-bundle.crt"
                --change "ENV PIP_CERT=/etc/ssl/host-ca-bundle.crt"
                --change "ENV REQUESTS_CA_BUNDLE=/etc/ssl/host-ca-bundle.crt")
    fi
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/tmp/*
    tar -C "$rootfs" -c . | docker import \
        --change "ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
        --change "ENV LANG=C.UTF-8" "${ca_env[@]}" --change 'CMD ["bash"]' - "$LOCAL_OS" >/dev/null
    rm -rf "$rootfs"
    say "Debian base $LOCAL_OS made in $((SECONDS - t0)) s"
}

# $LOCAL_OS plus the Dockerfile's torch, taken through the host's pip (its wheel directories and
# indexes: the CPU wheel where the host has one), so the Dockerfile's torch step finds it installed
# even where the PyTorch index does not answer. Without such a wheel: $LOCAL_OS as it is.
make_local_base() {
    has_image "$LOCAL_BASE" && { say "local base $LOCAL_BASE is there"; return; }
    make_local_os
    local torch ctx py t0=$SECONDS
    torch=$(grep -o 'torch==[0-9][0-9.]*' Dockerfile | head -n1)
    py=$(docker run --rm "$LOCAL_OS" python -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    ctx=$(mktemp -d /tmp/spa-base-ctx.XXXXXX)
    if timeout 300 python3 -m pip download -q --no-deps --only-binary :all: --python-version "$py" \
            --platform manylinux_2_28_x86_64 "$torch" -d "$ctx" >/dev/null 2>&1 \
            && ls "$ctx"/torch-*.whl >/dev/null 2>&1; then
        say "installing $(basename "$ctx"/torch-*.whl) from the host's pip into $LOCAL_BASE"
        printf 'FROM %s\nCOPY *.whl /tmp/\nRUN pip install --no-cache-dir /tmp/*.whl && rm /tmp/*.whl\n' \
            "$LOCAL_OS" >"$ctx/Dockerfile"
        nice -n 10 docker build --network host -t "$LOCAL_BASE" "$ctx" >"$STATE/build-base.log" 2>&1 \
            || { tail -n 20 "$STATE/build-base.log" >&2; rm -rf "$ctx"; exit 1; }
    else
        say "the host's pip has no $torch wheel for Python $py: the Dockerfile's index will be asked"
        docker tag "$LOCAL_OS" "$LOCAL_BASE"
    fi
    rm -rf "$ctx"
    say "local base $LOCAL_BASE made in $((SECONDS - t0)) s"
}

t_start=$SECONDS
base=${SPA_BASE_IMAGE:-}
prometheus=""
if [ -z "$base" ]; then
    if [ "${SPA_LOCAL_BASE:-0}" != 1 ] && pull "$REGISTRY_BASE"; then
        base=$REGISTRY_BASE
    else
        make_local_base
        base=$LOCAL_BASE
    fi
fi
if [ "$base" != "$LOCAL_BASE" ] && pull "$REGISTRY_PROMETHEUS"; then
    prometheus=$REGISTRY_PROMETHEUS
else
    make_local_os
    prometheus=$LOCAL_PROMETHEUS
fi

# Prometheus' image (no torch in it) builds beside spa-serving's: both wait mostly on downloads.
prom_pid=""
if [ "$prometheus" = "$LOCAL_PROMETHEUS" ]; then
    say "building $LOCAL_PROMETHEUS on $LOCAL_OS (Debian's prometheus package), in the background"
    (t0=$SECONDS
     nice -n 10 docker build --network host --build-arg "BASE=$LOCAL_OS" \
         -f scripts/prometheus.Dockerfile -t "$LOCAL_PROMETHEUS" . >"$STATE/build-prometheus.log" 2>&1 \
         || { tail -n 30 "$STATE/build-prometheus.log" >&2; exit 1; }
     say "$LOCAL_PROMETHEUS built in $((SECONDS - t0)) s") &
    prom_pid=$!
fi

say "building spa-serving:cpu on $base"
t0=$SECONDS
nice -n 10 docker build --network host --build-arg "BASE=$base" --build-arg TORCH_VARIANT=cpu \
    -t spa-serving:cpu . >"$STATE/build-spa.log" 2>&1 || { tail -n 30 "$STATE/build-spa.log" >&2; exit 1; }
say "spa-serving:cpu built in $((SECONDS - t0)) s (log: $STATE/build-spa.log)"
[ -z "$prom_pid" ] || wait "$prom_pid"

printf 'SPA_BASE_IMAGE=%s\nSPA_PROMETHEUS_IMAGE=%s\n' "$base" "$prometheus" >"$STATE/images.env"
say "images ready in $((SECONDS - t_start)) s: spa-serving:cpu (on $base), $prometheus"
