#!/usr/bin/env bash
# Build the Docker image with podman and prove it works: the container becomes healthy, serves
# the page, and answers an upload end to end (the browser test, pointed at the container).
#
# Building and health probing is ../shared/tools/container-smoke.sh (podman setup for machines
# without a Docker engine or registry access; see ../shared/reference/containers.md). On a
# machine with Docker, `docker build -t simam-viz . && docker run --init -p 8501:8501 simam-viz`
# is all this does.
#   env: IMG (localhost/simam-viz:smoke)  PORT (8502)  SMOKE (path of container-smoke.sh)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SMOKE=${SMOKE:-$ROOT/../shared/tools/container-smoke.sh}
IMG=${IMG:-localhost/simam-viz:smoke}
PORT=${PORT:-8502}
WORK=${WORK:-/tmp/simam-viz-ctr}
export WORK
# the Debian mirror apt uses (the helper's own lookup trips over `set -o pipefail` when one of
# the sources files it globs for does not exist)
MIRROR=${MIRROR:-$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources \
  /etc/apt/sources.list.d/*.list 2>/dev/null | grep -E '^(deb |URIs:)' | grep -oE 'https?://[^ ]+' \
  | grep -v -- '-security' | head -n1 || true)}
export MIRROR=${MIRROR:-http://deb.debian.org/debian}
[ -f "$SMOKE" ] || { echo "error: $SMOKE not found (set SMOKE=...)"; exit 2; }
ls "$ROOT"/checkpoints/demo/*.safetensors >/dev/null 2>&1 \
  || { echo "error: no demo models in checkpoints/demo (make demo-weights)"; exit 2; }

# Air-gapped machines: the local PyPI mirror and wheel store go into the build read-only.
BUILD_ARGS=${BUILD_ARGS:-}
for d in /opt/pypi /opt/pypi-more /opt/wheels; do
  [ -d "$d" ] && BUILD_ARGS="$BUILD_ARGS -v $d:$d:ro"
done
[ -d /opt/pypi/simple ] && BUILD_ARGS="$BUILD_ARGS --build-arg PIP_EXTRA_INDEX_URL=file:///opt/pypi/simple"
[ -d /opt/pypi-more/files ] && BUILD_ARGS="$BUILD_ARGS --build-arg PIP_FIND_LINKS=/opt/pypi-more/files"
export BUILD_ARGS

start=$SECONDS
# 1. build, run, poll HTTP and the HEALTHCHECK (the helper removes its container afterwards)
# (the helper maps the same port on both sides, so it probes the app on its own port 8501)
PORT=8501 URL_PATH=/ WAIT_S=${WAIT_S:-180} bash "$SMOKE" "$ROOT" "$IMG" || {
  rc=$?; echo "error: container smoke test failed (status $rc)"
  [ -f "$WORK/debootstrap.log" ] && tail -n 5 "$WORK/debootstrap.log"
  exit $rc
}
build_s=$((SECONDS - start))
export CONTAINERS_CONF="$WORK/containers.conf"

# 2. a fresh container for the end-to-end check; time from start to healthy
cid=$(podman run -d --init -p "127.0.0.1:$PORT:8501" "$IMG")
trap 'podman rm -f -t 2 "$cid" >/dev/null 2>&1 || true' EXIT
t0=$(date +%s.%N)
for _ in $(seq 180); do
  podman healthcheck run "$cid" >/dev/null 2>&1 && break
  [ "$(podman inspect -f '{{.State.Running}}' "$cid")" = true ] || { podman logs "$cid" | tail -30; exit 1; }
  sleep 0.5
done
podman healthcheck run "$cid" >/dev/null || { echo "error: container never became healthy"; exit 1; }
cold=$(python3 -c "import time; print(f'{time.time() - $t0:.1f}')")
user=$(podman exec "$cid" id -u)
[ "$user" != 0 ] || { echo "error: the app runs as root in the container"; exit 1; }

# 3. the real browser tests (views, downloads, two sessions, every bad input), against the container
SIMAM_VIZ_URL="http://127.0.0.1:$PORT" "$ROOT/.venv/bin/python" -m pytest -q -p no:cacheprovider \
  "$ROOT/tests/test_browser.py" "$ROOT/tests/test_bad_input.py"

size=$(podman image inspect -f '{{.Size}}' "$IMG" | awk '{printf "%.2f GB", $1/1e9}')
echo "docker-smoke passed: image $size, build+first probe ${build_s}s, cold start to healthy ${cold}s, uid $user"
