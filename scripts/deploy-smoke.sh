#!/usr/bin/env bash
# Replicas behind the sticky proxy, proven with real browsers (`make deploy-smoke`, after
# `make docker-smoke`, whose image it reuses).
#
# The topology of deploy/compose.yaml, run with plain podman (no compose engine needed): one
# network, the app replicas under the one DNS name `app` (compose's service name), hardened as
# in compose.yaml and the Kubernetes Deployment (read-only root filesystem, /tmp a bounded
# tmpfs, a pids limit, no capabilities, non-root, the same cookie secret, the weights folder
# shared read-only), and the nginx proxy of deploy/proxy/ in its public configuration (no debug
# header) published on 127.0.0.1:$PORT.
#   0. each replica: healthy (liveness), then /readyz 503 while it warms and 200 once warm;
#      the proxy answers without X-Simam-Viz-Upstream, hides /metrics, sets a cookie without
#      Secure over plain HTTP; each replica's /metrics has the admission control's gauges;
#   1. one replica: six browser sessions upload at once (p50/p95 to pixels), download a PNG;
#   2. a second replica joins (the proxy sees it under `app`, but sends it new browsers only
#      once its /readyz says it is warm): six sessions spread three and three by their
#      affinity cookie, upload, download; then one replica is stopped while the other's
#      sessions upload: its sessions, which had uploaded images there, reconnect through the
#      proxy, the page says their upload was lost with that server, and after uploading again
#      they have their own figures within 10 s; the others never notice
#      (scripts/deploy_probe.py). The stop is the hard kind: first the proxy's packets to that
#      replica are dropped (nft in the proxy's network namespace), so the proxy sees what a
#      vanished node gives, connection timeouts, not the quick "connection refused" of a
#      stopped container on this host; then the container stops.
#   env: IMG (localhost/simam-viz:smoke)  PROXY_IMG (localhost/simam-viz-proxy:smoke)
#        PORT (8503)  WORK (/tmp/simam-viz-ctr: docker-smoke's podman settings)  SESSIONS (6)
#        THREADS (torch threads per analysis: 1, compose.yaml's OMP_NUM_THREADS)
#        FAILOVER_LIMIT (10: seconds from the stop until the moved sessions, having uploaded
#        again, show their own figures)
#        VANISH (auto: drop packets before the stop when nsenter and nft work here; 0: a plain
#        stop)
#        BUSY_WAIT_S (60: how long an analysis waits for a slot before "the server is busy";
#        this test is about routing and failover, not the busy path of tests/test_app.py)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
IMG=${IMG:-localhost/simam-viz:smoke}
PROXY_IMG=${PROXY_IMG:-localhost/simam-viz-proxy:smoke}
PORT=${PORT:-8503}
WORK=${WORK:-/tmp/simam-viz-ctr}
SESSIONS=${SESSIONS:-6}
THREADS=${THREADS:-1}
FAILOVER_LIMIT=${FAILOVER_LIMIT:-10}
BUSY_WAIT_S=${BUSY_WAIT_S:-60}
VANISH=${VANISH:-auto}
PY="$ROOT/.venv/bin/python"
export CONTAINERS_CONF="$WORK/containers.conf"  # written by container-smoke.sh (docker-smoke)
[ -f "$CONTAINERS_CONF" ] || { echo "error: $CONTAINERS_CONF missing: run make docker-smoke first"; exit 2; }
podman image exists "$IMG" || { echo "error: image $IMG missing: run make docker-smoke first"; exit 2; }

NAME=simam-viz-deploy-$$
NET=$NAME
WEIGHTS=$(mktemp -d)  # the shared read-only weights folder (empty: the demo models are baked in)
chmod 755 "$WEIGHTS"
STARTED=()
cleanup() {
  local rc=$?
  if [ $rc != 0 ]; then
    for c in "${STARTED[@]}"; do
      echo "--- last log lines of $c"
      # the proxy: its replica changes and errors, not the access log
      podman logs "$c" 2>&1 | grep -vE '^[0-9.]+ \[' | tail -n 15 || true
    done
  fi
  for c in "${STARTED[@]}"; do podman rm -f -t 2 "$c" >/dev/null 2>&1 || true; done
  podman network rm -f "$NET" >/dev/null 2>&1 || true
  rm -rf "$WEIGHTS"
  exit $rc
}
trap cleanup EXIT
start=$SECONDS
now() { python3 -c 'import time; print(f"{time.time():.3f}")'; }
since() { python3 -c "import time; print(f'{time.time() - $1:.1f}')"; }

# the proxy image: Debian's nginx on the app's own base (cached after the first build)
t=$SECONDS
podman build --format docker --network host --pull=never -q -t "$PROXY_IMG" "$ROOT/deploy/proxy" >/dev/null
echo "proxy image $PROXY_IMG ready in $((SECONDS - t)) s"
podman network create "$NET" >/dev/null
SECRET=$(python3 -c 'import secrets; print(secrets.token_hex(32))')

# one replica: the app image hardened as in deploy/compose.yaml, reachable as `app`
run_app() {
  local c="$NAME-app-$1"
  podman run -d --init --name "$c" --network "$NET" --network-alias app \
    --read-only --read-only-tmpfs=false --tmpfs /tmp:rw,size=512m,mode=1777 --pids-limit 512 \
    --cap-drop ALL --security-opt no-new-privileges \
    -e STREAMLIT_SERVER_COOKIE_SECRET="$SECRET" -e SIMAM_VIZ_MAX_CONCURRENT=2 \
    -e SIMAM_VIZ_BUSY_WAIT_S="$BUSY_WAIT_S" \
    -e OMP_NUM_THREADS="$THREADS" -v "$WEIGHTS:/app/checkpoints/official:ro" "$IMG" >/dev/null
  STARTED+=("$c")
}

address() { podman inspect -f "{{(index .NetworkSettings.Networks \"$NET\").IPAddress}}" "$1"; }
# GET http://REPLICA:8501PATH from here (rootful podman: the host reaches the network): "CODE BODY"
ask() {
  local out
  out=$(curl --noproxy '*' -sS -m 3 -w '\n%{http_code}' "http://$(address "$1"):8501$2" 2>/dev/null) \
    || { echo "000 -"; return 0; }
  echo "${out##*$'\n'} ${out%$'\n'*}"
}
proxy_file() { podman exec "$NAME-proxy" cat "/tmp/nginx/$1" 2>/dev/null || true; }

# healthy (the image's HEALTHCHECK, liveness, run by hand: no systemd here), then ready: /readyz
# 200 "ready" once the warm-up has loaded the models and analysed the default example (503
# "warming up" before). With the proxy up (its name as $3), the proxy must not send new
# browsers (its round-robin group, upstream-servers.conf) to the replica before that.
wait_ready() {
  local c=$1 t0=$2 watch=${3:-} healthy="" cold="" held="" ready ip
  ip=$(address "$c")
  for _ in $(seq 900); do
    [ "$(podman inspect -f '{{.State.Running}}' "$c")" = true ] || { echo "error: $c exited"; exit 1; }
    if [ -z "$healthy" ] && podman healthcheck run "$c" >/dev/null 2>&1; then healthy=$(since "$t0"); fi
    if [ -n "$healthy" ]; then
      # the proxy's view first, then the replica's answer: readiness only ever goes 503 -> 200
      local rr="" pinned=""
      if [ -n "$watch" ]; then
        rr=$(proxy_file upstream-servers.conf); pinned=$(proxy_file replicas.map)
      fi
      ready=$(ask "$c" /readyz)
      if [ "${ready%% *}" = 503 ]; then
        cold="${cold:-$(since "$t0")s (${ready#* })}"
        if [[ $rr == *"$ip:8501"* ]]; then
          echo "error: the proxy sends new browsers to $c while its /readyz says: ${ready#* }"; exit 1
        fi
        [[ $pinned == *"$ip:8501"* ]] && held=${held:-$(since "$t0")}
      elif [ "$ready" = "200 ready" ]; then
        echo "$c: healthy after ${healthy}s, /readyz 503 from ${cold:-never seen}," \
          "200 after $(since "$t0")s${held:+; the proxy knew it from ${held}s but held it out of the round robin until then}"
        return 0
      elif [ "${ready%% *}" != 000 ]; then
        echo "error: $c: /readyz answered '$ready'"; exit 1
      fi
    fi
    sleep 0.2
  done
  echo "error: $c not ready in 180 s (/readyz: ${ready:-no answer})"; exit 1
}

# right before a load: every replica named answers /readyz 200 "ready"
check_ready() {
  local c r
  for c in "$@"; do
    r=$(ask "$c" /readyz)
    [ "$r" = "200 ready" ] || { echo "error: $c /readyz: $r"; exit 1; }
  done
  echo "readyz: 200 ready on $*"
}

t0=$(now); run_app 1; wait_ready "$NAME-app-1" "$t0"
uid=$(podman exec "$NAME-app-1" id -u)
[ "$uid" != 0 ] || { echo "error: the app runs as root"; exit 1; }
# the user's own home would be writable on a writable root filesystem; /tmp must be
if podman exec "$NAME-app-1" touch /home/app/probe-write 2>/dev/null; then
  echo "error: the root filesystem is writable"; exit 1
fi
podman exec "$NAME-app-1" touch /tmp/probe-write || { echo "error: /tmp is not writable"; exit 1; }

# the public configuration: no PROXY_DEBUG_UPSTREAM (the probe tells replicas by their cookie)
podman run -d --name "$NAME-proxy" --network "$NET" -p "127.0.0.1:$PORT:8080" \
  --read-only --read-only-tmpfs=false --tmpfs /tmp:rw,size=256m,mode=1777 --pids-limit 512 \
  --cap-drop ALL --security-opt no-new-privileges "$PROXY_IMG" >/dev/null
STARTED+=("$NAME-proxy")
for _ in $(seq 100); do
  podman healthcheck run "$NAME-proxy" >/dev/null 2>&1 && break
  sleep 0.2
done
podman healthcheck run "$NAME-proxy" >/dev/null || { echo "error: the proxy is not healthy"; exit 1; }
curl -fsS -m 5 "http://127.0.0.1:$PORT/_stcore/health" | grep -qx ok \
  || { echo "error: no app health through the proxy"; exit 1; }
# what the public sees: a cookie (not Secure over plain HTTP), no internal address, no metrics
headers=$(curl -fsS -m 10 -D - -o /dev/null "http://127.0.0.1:$PORT/" | tr -d '\r')
if grep -qi '^x-simam-viz-upstream:' <<<"$headers"; then
  echo "error: the proxy gives away the replica's address: $(grep -i '^x-simam-viz-upstream:' <<<"$headers")"
  exit 1
fi
cookie=$(grep -i '^set-cookie: simam_viz_affinity=' <<<"$headers" || true)
[ -n "$cookie" ] || { echo "error: no affinity cookie from the proxy"; exit 1; }
if grep -qi 'secure' <<<"$cookie"; then echo "error: a Secure cookie over plain HTTP: $cookie"; exit 1; fi
code=$(curl -s -m 5 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/metrics")
[ "$code" = 404 ] || { echo "error: the proxy serves /metrics ($code)"; exit 1; }
metrics=$(ask "$NAME-app-1" /metrics)
[[ $metrics == "200 "*"simam_viz_slots_total 2"* ]] \
  || { echo "error: no simam_viz_slots_total 2 in the replica's /metrics: ${metrics:0:300}"; exit 1; }
echo "proxy: no X-Simam-Viz-Upstream header, /metrics 404, cookie '${cookie#*: }';" \
  "replica /metrics: $(grep -c '^simam_viz_' <<<"${metrics#* }") samples"

echo "== 1 replica, $SESSIONS sessions"
check_ready "$NAME-app-1"
"$PY" "$ROOT/scripts/deploy_probe.py" latency --url "http://127.0.0.1:$PORT" \
  --sessions "$SESSIONS" | tee "$WORK/deploy-one.json"

echo "== 2 replicas, $SESSIONS sessions, then one replica stopped"
t0=$(now); run_app 2; wait_ready "$NAME-app-2" "$t0" proxy
# the proxy follows the name `app` by itself (deploy/proxy/proxy-entrypoint.sh) and takes a
# replica into its round robin once its /readyz says 200: wait for that
# (it learns the new address from podman's DNS, which has taken from 2 s to 50 s here)
replicas() { proxy_file upstream-servers.conf | grep -c '^server ' || true; }
t1=$(now)
for _ in $(seq 240); do
  [ "$(replicas)" = 2 ] && break
  sleep 0.5
done
echo "proxy: second replica in its round robin $(awk -v a="$t1" -v b="$(now)" \
  'BEGIN { printf "%.1f", b - a }') s after it was ready"
if [ "$(replicas)" != 2 ]; then
  echo "error: the proxy did not take the second (ready) replica into its round robin"
  podman logs "$NAME-proxy" 2>&1 | grep -v '^10\.' | tail -5
  podman exec "$NAME-proxy" getent ahostsv4 app || true
  exit 1
fi
podman logs "$NAME-proxy" 2>&1 | grep '^proxy: ' | tail -3
check_ready "$NAME-app-1" "$NAME-app-2"
STOP="podman stop -t 2 {replica}"
if [ "$VANISH" != 0 ]; then
  # an empty drop chain in the proxy's network namespace; the stop adds the victim to it
  pid=$(podman inspect -f '{{.State.Pid}}' "$NAME-proxy")
  if nsenter -t "$pid" -n nft add table ip simam_vanish 2>/dev/null \
      && nsenter -t "$pid" -n nft add chain ip simam_vanish out \
        '{ type filter hook output priority 0; }'; then
    STOP="sh -c 'nsenter -t $pid -n nft add rule ip simam_vanish out ip daddr {address} drop"
    STOP="$STOP && podman stop -t 2 {replica}'"
    echo "the stop: packets to the replica dropped first (a vanished node), then podman stop"
  elif [ "$VANISH" != auto ]; then
    echo "error: VANISH=$VANISH but nft in the proxy's network namespace failed"; exit 1
  else
    echo "the stop: podman stop (nft in the proxy's network namespace unavailable here)"
  fi
fi
"$PY" "$ROOT/scripts/deploy_probe.py" failover --url "http://127.0.0.1:$PORT" \
  --sessions "$SESSIONS" --stop-cmd "$STOP" \
  --failover-limit "$FAILOVER_LIMIT" \
  --replica "$(address "$NAME-app-1")=$NAME-app-1" \
  --replica "$(address "$NAME-app-2")=$NAME-app-2" | tee "$WORK/deploy-two.json"

# the survivor's admission control after all that (its counters cover both phases' share)
survivor=$(python3 -c "import json; d=json.loads(open('$WORK/deploy-two.json').read().strip().splitlines()[-1]); print([n for n in ('$NAME-app-1', '$NAME-app-2') if n != d['stopped']][0])")
ask "$survivor" /metrics | grep -E '^(200 )?simam_viz_(slots_|queue_wait|busy_replies|jobs_total)' \
  | sed "s/^200 //; s/^/$survivor: /" || true

"$PY" - "$WORK/deploy-one.json" "$WORK/deploy-two.json" <<'EOF'
import json, sys
one, two = (json.loads(open(p).read().strip().splitlines()[-1]) for p in sys.argv[1:])
print(f"upload to pixels, {one['sessions']} sessions at once: 1 replica p50 {one['p50_s']} s "
      f"p95 {one['p95_s']} s; 2 replicas p50 {two['p50_s']} s p95 {two['p95_s']} s")
notices = [s for s in two['lost_notice_s'] if s is not None]
print(f"replica stopped: its {two['victims']} sessions reconnected after "
      f"{max(two['reconnected_s'])} s, were told their upload was lost after "
      f"{max(notices) if notices else 'never'} s "
      f"({sum(two['lost_notice_by_itself'])} by themselves), and had their own figures again "
      f"(uploaded anew) after {max(two['own_figures_again_s'])} s (worst); the other "
      f"replica's uploads meanwhile took {max(two['others_upload_during_stop_s'])} s")
print(f"answers with X-Simam-Viz-Upstream: {one['upstream_header_seen']} + "
      f"{two['upstream_header_seen']}; /media/ answers checked for their replica: "
      f"{one['media_answers']} + {two['media_answers']}")
EOF
echo "deploy-smoke passed in $((SECONDS - start)) s"
