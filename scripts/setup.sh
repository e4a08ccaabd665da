#!/usr/bin/env bash
# Installs what hotlead's demo and tests need, skipping what is already there:
#   - redis-server, from apt;
#   - chromium, from apt (the hot-leads board's browser test);
#   - tansu 0.6.0 (a Kafka-protocol broker with SQLite storage), with cargo.
# Safe to run any number of times.
set -euo pipefail

TANSU_VERSION="0.6.0"
export PATH="$HOME/.cargo/bin:$PATH"

sudo_if_needed() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]} with apt-get ..."
  export DEBIAN_FRONTEND=noninteractive
  sudo_if_needed apt-get update -qq
  sudo_if_needed apt-get install -y -qq "${missing[@]}" >/dev/null
fi
echo "setup: $(redis-server --version | cut -d' ' -f1-3) found"
echo "setup: $(chromium --version 2>/dev/null | head -1) found"

if tansu --version 2>/dev/null | grep -qx "tansu $TANSU_VERSION"; then
  echo "setup: tansu $TANSU_VERSION found"
else
  echo "setup: installing tansu $TANSU_VERSION with cargo (about 20 minutes on 2 cores) ..."
  cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore,libsql
  echo "setup: tansu $TANSU_VERSION installed"
fi
