#!/usr/bin/env bash
# `make compose-test`: the compose stack brought up for real under a Docker engine and checked
# from outside (tests/test_compose.py::test_compose_up_for_real, which says what it checks).
#
#   1. starts dockerd if none answers (and stops it at the end, if it started it)
#   2. scripts/local-base.sh: the images (a local Debian base when no registry answers)
#   3. the test: docker-compose up -d (v1.29) or docker compose (v2), healthchecks, host agent,
#      Prometheus, scaling, a killed worker, docker-compose down -v
#
# Models are built by the stack's model-builder into SPA_MODELS (a bind mount; default
# ~/.cache/spa/compose-models, kept like the images are: only the first run on a machine spends
# minutes on them); `down -v` removes every volume.
# Needs root (or the docker group) and: apt-get install -y docker.io docker-compose debootstrap
set -euo pipefail
cd "$(dirname "$0")/.."
STATE=.spa-cache/compose
mkdir -p "$STATE"
t_start=$SECONDS
say() { echo "[compose-test $(date +%T)] $*"; }

command -v docker >/dev/null || { echo "no docker CLI: apt-get install -y docker.io docker-compose debootstrap" >&2; exit 2; }

dockerd_pid=""
stop_dockerd() {
    if [ -n "$dockerd_pid" ]; then
        say "stopping the dockerd this test started (pid $dockerd_pid)"
        kill "$dockerd_pid" 2>/dev/null || true
        for _ in $(seq 60); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 0.5; done
    fi
}
if ! docker info >/dev/null 2>&1; then
    command -v dockerd >/dev/null || { echo "no Docker engine: apt-get install -y docker.io" >&2; exit 2; }
    say "no Docker engine answers: starting dockerd (log: $STATE/dockerd.log)"
    dockerd >"$STATE/dockerd.log" 2>&1 &
    dockerd_pid=$!
    trap stop_dockerd EXIT
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    docker info >/dev/null 2>&1 || { tail -n 20 "$STATE/dockerd.log" >&2; exit 1; }
fi

# cgroup v1 weighs all of Docker's containers together as ONE task (cpu.shares 1024) against
# every host process: on a busy 2-core machine the whole stack then got ~1/25 of the CPU and its
# healthchecks timed out. Give the group the weight of the stack's processes (8 containers:
# what they would weigh as plain processes, as `make demo` runs them), restored at the end.
shares=/sys/fs/cgroup/cpu/docker/cpu.shares
old_shares=""
restore() {
    [ -z "$old_shares" ] || { echo "$old_shares" >"$shares"; say "docker's cpu.shares back to $old_shares"; }
    stop_dockerd
}
trap restore EXIT
[ -e /sys/fs/cgroup/cpu/docker ] || mkdir /sys/fs/cgroup/cpu/docker 2>/dev/null || true  # Docker's own, made early
if [ -w "$shares" ] && [ "${SPA_DOCKER_CPU_PARITY:-1}" = 1 ]; then
    old_shares=$(cat "$shares")
    echo 8192 >"$shares"
    say "docker's cgroup cpu.shares $old_shares -> 8192 for the test (SPA_DOCKER_CPU_PARITY=0: leave it)"
fi

scripts/local-base.sh
set -a
# shellcheck disable=SC1091
. "$STATE/images.env"
set +a

if docker compose version >/dev/null 2>&1; then
    export SPA_COMPOSE="docker compose"
elif command -v docker-compose >/dev/null; then
    export SPA_COMPOSE="docker-compose"
else
    echo "neither \`docker compose\` nor docker-compose: apt-get install -y docker-compose" >&2; exit 2
fi
# One device per agent replica (compose's default is 4): 3 replicas of 4 devices already keep a
# busy 2-core machine's CPU saturated (measured: 24.7 tokens/s with 3 replicas, 23.2 with 4), so
# a 4th replica could not raise tokens/s; with one device each the worker has headroom and the
# scale-out check measures scaling, not the host's load.
export SPA_AGENT_DEVICES=${SPA_AGENT_DEVICES:-1}
# The agents alternate fp16 and int8 frames, so the bytes-per-token panel shows both (issue 22).
export SPA_AGENT_WIRE=${SPA_AGENT_WIRE:-fp16,int8}
export SPA_MODELS=${SPA_MODELS:-${SPA_CACHE:-$HOME/.cache/spa}/compose-models}
mkdir -p "$SPA_MODELS"
chown 1000:1000 "$SPA_MODELS" 2>/dev/null || true  # the image's user `spa` writes the models
say "images ready after $((SECONDS - t_start)) s; the stack with $($SPA_COMPOSE version --short 2>/dev/null || $SPA_COMPOSE version | head -n1), models in $SPA_MODELS"

PY=${PY:-.venv/bin/python}
rc=0
SPA_COMPOSE_TEST=1 timeout 3600 "$PY" -m pytest -q -s -p no:cacheprovider \
    tests/test_compose.py -k test_compose_up_for_real || rc=$?
say "compose-test $([ $rc = 0 ] && echo passed || echo FAILED) in $((SECONDS - t_start)) s"
exit $rc
