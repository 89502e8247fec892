#!/bin/sh
# Start nginx with the replicas that $UPSTREAM (host:port, default app:8501) resolves to, and
# follow that name: every $RESOLVE_EVERY_S seconds (2) it is resolved again, and when two
# answers in a row give a new set of addresses (scaled, a replica restarted with a new address,
# one gone) the included files are rewritten and nginx reloads. Open websockets stay on the old
# workers.
#
# Readiness: new browsers (the round-robin group) go only to replicas whose $READY_PATH
# (/readyz) has answered 200, i.e. whose warm-up has loaded the models; while none has, every
# replica takes them (the app works cold, only slower). A replica that answered 200 once stays
# ready while its address resolves (the app's /readyz never goes back to 503), so only the
# replicas still warming are asked, each poll. Every replica keeps its own group: a browser
# pinned to it stays there, and its backups are the ready replicas.
#
#   env: UPSTREAM (app:8501)  RESOLVE_EVERY_S (2)  READY_PATH (/readyz)
#        PROXY_DEBUG_UPSTREAM (0; 1: answer an X-Simam-Viz-Upstream header naming the replica's
#        internal address, for tests)
#        PROXY_TRUSTED_FRONTS (none: CIDRs of load balancers in front, whose X-Forwarded-For
#        gives the client address and whose X-Forwarded-Proto: https makes the cookie Secure)
set -eu
UPSTREAM=${UPSTREAM:-app:8501}
HOST=${UPSTREAM%:*}
PORT=${UPSTREAM##*:}
EVERY=${RESOLVE_EVERY_S:-2}
READY_PATH=${READY_PATH:-/readyz}
DIR=${PROXY_CONFIG_DIR:-/tmp/nginx}  # nginx.conf includes the generated files from /tmp/nginx
mkdir -p "$DIR"

addresses() {
  getent ahostsv4 "$HOST" 2>/dev/null | awk '{print $1}' | sort -u | tr '\n' ' ' || true
}

# the words of $*, sorted, unique, one space apart (sets compare as strings)
normalize() {
  echo $(printf '%s\n' $* | sort -u)
}

# the addresses among $1 whose http://ADDRESS:$PORT$READY_PATH answers 200 now, asked at once
# (1 s each) with the image's Python (the slim base has no curl); nothing asked for no address
probe_ready() {
  [ -n "$(normalize $1)" ] || return 0
  python3 - "$PORT" "$READY_PATH" $1 <<'EOF' || true
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor

port, path, *addresses = sys.argv[1:]
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy


def ready(address: str) -> bool:
    try:
        with opener.open(f"http://{address}:{port}{path}", timeout=1) as answer:
            return answer.status == 200
    except Exception:
        return False


with ThreadPoolExecutor(len(addresses)) as pool:
    print(" ".join(a for a, ok in zip(addresses, pool.map(ready, addresses)) if ok))
EOF
}

# the ready replicas among $1: those of $2 (ready before) that still resolve, and those of the
# rest that answer ready now
ready_among() {  # $1: the addresses  $2: the replicas ready before
  known=""
  rest=""
  for a in $1; do
    case " $2 " in
      *" $a "*) known="$known $a" ;;
      *) rest="$rest $a" ;;
    esac
  done
  normalize "$known $(probe_ready "$rest")"
}

write_config() {  # $1: the addresses  $2: the ready ones among them (default: all)
  ready_set=$(normalize "${2-$1}")
  # no replica ready yet (all warming, or every warm-up failed): new browsers go to any
  rr=$ready_set
  [ -n "$rr" ] || rr=$1
  : > "$DIR/upstream-servers.conf.new"
  : > "$DIR/pinned.conf.new"
  : > "$DIR/replicas.map.new"
  for a in $rr; do
    echo "server $a:$PORT max_fails=2 fail_timeout=10s;" >> "$DIR/upstream-servers.conf.new"
  done
  for a in $1; do
    # the group of a browser pinned to $a: $a first, every other ready replica (every other
    # one while none is ready) as its backup, so that once $a fails to answer the group's
    # (shared) failure state skips it at once
    others=""
    for b in $ready_set; do [ "$b" = "$a" ] || others="$others $b"; done
    if [ -z "$others" ]; then
      for b in $1; do [ "$b" = "$a" ] || others="$others $b"; done
    fi
    pin=pin_$(echo "$a" | tr -c '0-9a-zA-Z\n' '_')
    {
      echo "upstream $pin {"
      echo "    zone $pin 64k;"
      echo "    server $a:$PORT max_fails=2 fail_timeout=10s;"
      for b in $others; do
        echo "    server $b:$PORT backup;"
      done
      echo "}"
    } >> "$DIR/pinned.conf.new"
    echo "$a:$PORT $pin;" >> "$DIR/replicas.map.new"
  done
  mv "$DIR/upstream-servers.conf.new" "$DIR/upstream-servers.conf"
  mv "$DIR/pinned.conf.new" "$DIR/pinned.conf"
  mv "$DIR/replicas.map.new" "$DIR/replicas.map"
}

# the settings from the environment, written once: the debug header, the trusted fronts
write_settings() {
  if [ "${PROXY_DEBUG_UPSTREAM:-0}" = 1 ]; then
    echo 'add_header X-Simam-Viz-Upstream $simam_viz_replica;' > "$DIR/debug-upstream.conf"
  else
    echo "# no X-Simam-Viz-Upstream header (PROXY_DEBUG_UPSTREAM=1 adds it)" \
      > "$DIR/debug-upstream.conf"
  fi
  echo "# PROXY_TRUSTED_FRONTS" > "$DIR/realip.conf"
  echo "# PROXY_TRUSTED_FRONTS" > "$DIR/trusted-fronts.geo"
  for cidr in ${PROXY_TRUSTED_FRONTS:-}; do
    case "$cidr" in
      *[!0-9A-Fa-f.:/]*)
        echo "proxy: PROXY_TRUSTED_FRONTS: '$cidr' is not an address or CIDR" >&2
        exit 2 ;;
    esac
    echo "set_real_ip_from $cidr;" >> "$DIR/realip.conf"
    echo "$cidr 1;" >> "$DIR/trusted-fronts.geo"
  done
}

# the main loop; `PROXY_ENTRYPOINT_LIB=1 . proxy-entrypoint.sh` only defines the functions
[ "${PROXY_ENTRYPOINT_LIB:-0}" = 1 ] && return 0

write_settings
# nginx needs one replica to start with
current=$(addresses)
while [ -z "$current" ]; do
  echo "proxy: waiting for $HOST to resolve" >&2
  sleep 1
  current=$(addresses)
done
ready=$(ready_among "$current" "")
write_config "$current" "$ready"
echo "proxy: replicas $current(ready: ${ready:-none, so all take new browsers})" >&2
nginx -e stderr -g 'daemon off;' &
pid=$!
trap 'kill -TERM "$pid" 2>/dev/null || true; wait "$pid" || true; exit 0' TERM INT

pending=""
while kill -0 "$pid" 2>/dev/null; do
  sleep "$EVERY" &
  wait $! || true
  now=$(addresses)
  next=$current
  # no answer at all (every replica down, DNS hiccup): keep the last known replicas; a new
  # set is applied once two answers in a row agree on it
  if [ -z "$now" ] || [ "$now" = "$current" ]; then
    pending=""
  elif [ "$now" != "$pending" ]; then
    pending=$now
  else
    next=$now
    pending=""
  fi
  next_ready=$(ready_among "$next" "$ready")
  if [ "$next" != "$current" ] || [ "$next_ready" != "$ready" ]; then
    write_config "$next" "$next_ready"
    if nginx -e stderr -t -q && nginx -e stderr -s reload; then
      echo "proxy: replicas $next(ready: ${next_ready:-none}; were $current(ready: ${ready:-none})): reloaded" >&2
      current=$next
      ready=$next_ready
    fi
  fi
done
wait "$pid"
