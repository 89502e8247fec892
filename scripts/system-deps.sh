#!/usr/bin/env bash
# Installs the Debian packages the test suite needs (emoji font, chromium, nginx), only those missing. Needs root (CI is root);
# without it, prints what to install and the tests that need them skip with that reason.
set -euo pipefail
need=()
[ -f /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ] || need+=(fonts-noto-color-emoji)
[ -x /usr/bin/chromium ] || need+=(chromium)  # real-browser tests (driven by playwright)
[ -x /usr/sbin/nginx ] || need+=(nginx)  # tests/test_proxy.py runs deploy/proxy/nginx.conf
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "system-deps: please install: ${need[*]} (apt-get install ${need[*]})" >&2
  exit 0
fi
apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
