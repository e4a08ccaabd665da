#!/usr/bin/env bash
# The benchmark, in one command: installs what it needs (scripts/setup.sh for
# Tansu and redis-server; a Python virtualenv with bench/requirements.txt for
# the peers), builds hotlead and hotlead-bench (release), then runs
# bench/run.py, which prints the table and writes bench/results/.
#
# Flags go to bench/run.py: --events, --contacts, --partitions,
# --latency-seconds, --systems, --no-latency (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

scripts/setup.sh
VENV=target/bench-venv
if ! "$VENV/bin/python" -c 'import confluent_kafka, quixstreams, redis, grpc_tools, yaml' 2>/dev/null \
  || ! cmp -s bench/requirements.txt "$VENV/requirements.txt"; then
  echo "bench: installing the peers' Python packages into $VENV ..."
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r bench/requirements.txt
  cp bench/requirements.txt "$VENV/requirements.txt"
fi
echo "bench: building hotlead and hotlead-bench (release) ..."
cargo build --release --quiet --bin hotlead --bin hotlead-bench
exec "$VENV/bin/python" bench/run.py --python "$VENV/bin/python" "$@"
