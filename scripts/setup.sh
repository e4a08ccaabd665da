#!/usr/bin/env bash
# Installs what hotlead's demo and tests need, skipping what is already there:
#   - redis-server, from apt;
#   - chromium, from apt (the hot-leads board's browser test);
#   - libssl-dev, pkg-config and openssl, from apt (Kafka TLS in the build;
#     the TLS tests make their certificates with openssl);
#   - tansu 0.6.0 (a Kafka-protocol broker with SQLite storage), with cargo;
#   - aiosmtpd, from PyPI into the venv target/smtp-venv (the real SMTP
#     server the notify tests start);
#   - promtool (checks and unit-tests the Prometheus alert rules), taken
#     from Debian's `prometheus` package without installing the package: only
#     the promtool binary is unpacked, into target/tools/bin, so no Prometheus
#     server is set up or started. A promtool already on PATH is used instead.
# Safe to run any number of times.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"

TANSU_VERSION="0.6.0"
export PATH="$HOME/.cargo/bin:$PATH"

sudo_if_needed() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
# The Kafka client's TLS links the system's OpenSSL.
[ -f /usr/include/openssl/ssl.h ] || missing+=(libssl-dev)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
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

PROMTOOL="$ROOT/target/tools/bin/promtool"
if command -v promtool >/dev/null 2>&1; then
  echo "setup: $(promtool --version 2>&1 | head -1) found on PATH"
elif [ -x "$PROMTOOL" ]; then
  echo "setup: $("$PROMTOOL" --version 2>&1 | head -1) found in target/tools/bin"
else
  echo "setup: unpacking promtool from Debian's prometheus package into target/tools/bin ..."
  candidate="$(apt-cache policy prometheus 2>/dev/null | awk '/Candidate:/ {print $2}')"
  if [ -z "$candidate" ] || [ "$candidate" = "(none)" ]; then
    sudo_if_needed apt-get update -qq
  fi
  download="$(mktemp -d)"
  trap 'rm -rf "$download"' EXIT
  # Downloading as the current user keeps apt from handing the file to its
  # sandbox user, who cannot write to a private temporary directory.
  (cd "$download" && apt-get -qq -o APT::Sandbox::User="$(id -un)" download prometheus)
  dpkg-deb --fsys-tarfile "$download"/prometheus_*.deb | tar -x -C "$download" ./usr/bin/promtool
  mkdir -p "$(dirname "$PROMTOOL")"
  mv "$download/usr/bin/promtool" "$PROMTOOL"
  echo "setup: $("$PROMTOOL" --version 2>&1 | head -1) installed in target/tools/bin"
fi

SMTP_VENV="$ROOT/target/smtp-venv"
AIOSMTPD="aiosmtpd==1.4.6"
if [ "$(cat "$SMTP_VENV/.installed" 2>/dev/null)" = "$AIOSMTPD" ]; then
  echo "setup: $AIOSMTPD found in target/smtp-venv"
else
  echo "setup: installing $AIOSMTPD into target/smtp-venv ..."
  python3 -m venv "$SMTP_VENV"
  "$SMTP_VENV/bin/pip" install --quiet --disable-pip-version-check "$AIOSMTPD"
  echo "$AIOSMTPD" >"$SMTP_VENV/.installed"
  echo "setup: $AIOSMTPD installed in target/smtp-venv"
fi
