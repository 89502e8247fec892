#!/bin/sh
# Start nginx with the replicas that $UPSTREAM (host:port, default app:8501) resolves to, and
# follow that name: every $RESOLVE_EVERY_S seconds (2) it is resolved again, and when two
# answers in a row give a new set of addresses (scaled, a replica restarted with a new address,
# one gone) the two included files are rewritten and nginx reloads. Open websockets stay on the
# old workers.
set -eu
UPSTREAM=${UPSTREAM:-app:8501}
HOST=${UPSTREAM%:*}
PORT=${UPSTREAM##*:}
EVERY=${RESOLVE_EVERY_S:-2}
DIR=/tmp/nginx
mkdir -p "$DIR"

addresses() {
  getent ahostsv4 "$HOST" 2>/dev/null | awk '{print $1}' | sort -u | tr '\n' ' ' || true
}

write_config() {  # $1: the addresses
  : > "$DIR/upstream-servers.conf.new"
  : > "$DIR/pinned.conf.new"
  : > "$DIR/replicas.map.new"
  for a in $1; do
    echo "server $a:$PORT max_fails=2 fail_timeout=10s;" >> "$DIR/upstream-servers.conf.new"
    # the group of a browser pinned to $a: $a first, every other replica as its backup, so
    # that once $a fails to answer the group's (shared) failure state skips it at once
    pin=pin_$(echo "$a" | tr -c '0-9a-zA-Z\n' '_')
    {
      echo "upstream $pin {"
      echo "    zone $pin 64k;"
      echo "    server $a:$PORT max_fails=2 fail_timeout=10s;"
      for b in $1; do
        [ "$b" = "$a" ] || echo "    server $b:$PORT backup;"
      done
      echo "}"
    } >> "$DIR/pinned.conf.new"
    echo "$a:$PORT $pin;" >> "$DIR/replicas.map.new"
  done
  mv "$DIR/upstream-servers.conf.new" "$DIR/upstream-servers.conf"
  mv "$DIR/pinned.conf.new" "$DIR/pinned.conf"
  mv "$DIR/replicas.map.new" "$DIR/replicas.map"
}

# nginx needs one replica to start with
current=$(addresses)
while [ -z "$current" ]; do
  echo "proxy: waiting for $HOST to resolve" >&2
  sleep 1
  current=$(addresses)
done
write_config "$current"
echo "proxy: replicas $current" >&2
nginx -e stderr -g 'daemon off;' &
pid=$!
trap 'kill -TERM "$pid" 2>/dev/null || true; wait "$pid" || true; exit 0' TERM INT

pending=""
while kill -0 "$pid" 2>/dev/null; do
  sleep "$EVERY" &
  wait $! || true
  now=$(addresses)
  # no answer at all (every replica down, DNS hiccup): keep the last known replicas; a new
  # set is applied once two answers in a row agree on it
  if [ -z "$now" ] || [ "$now" = "$current" ]; then
    pending=""
  elif [ "$now" != "$pending" ]; then
    pending=$now
  else
    write_config "$now"
    if nginx -e stderr -t -q && nginx -e stderr -s reload; then
      echo "proxy: replicas $now (were $current): reloaded" >&2
      current=$now
    fi
    pending=""
  fi
done
wait "$pid"
