#!/usr/bin/env bash
# The benchmark, in one command: installs what it needs (scripts/setup.sh for
# Tansu and redis-server; a Python virtualenv with bench/requirements.txt for
# the peers), builds hotlead and hotlead-bench (release), then runs
# bench/run.py, which prints the report and writes bench/results/.
#
# The full run (20-30 minutes on 2 cores): drains a 1M-event backlog with the
# ceiling, hotlead and both peers; open-loop latency at 1,000 and 5,000
# events/s and at half of hotlead's rate, beside the broker's own two hops;
# hotlead over 10k, 100k and 1M contacts (Redis bytes per contact-model, peak
# RSS, events/s, Redis projected for 10M contacts x 2 models); hotlead
# draining beside a `hotlead backfill` at full speed and at its default rate
# limit (the back-fill's cost on the live pipeline); hotlead without and
# with account roll-ups (bench/rules-accounts.yaml), and its two stages
# apart (the account stage's cost); the targets.
#
#   scripts/bench.sh --quick   the regression guard, under three minutes
#                              once built: 1M events over 100k contacts,
#                              ceiling and hotlead only; exits 1 when
#                              hotlead drains under 85 % of the ceiling or
#                              Redis holds more than 250 bytes per
#                              contact-model (GUARD_* in bench/run.py)
#   scripts/bench.sh --quick --accounts
#                              the guard, then the accounts phase (several
#                              minutes more)
#
# Other flags go to bench/run.py: --events, --contacts, --partitions,
# --systems, --latency-seconds, --latency-rates, --no-latency, --no-scaling,
# --scaling-contacts, --scaling-peers, --backfill-rates, --[no-]accounts,
# --out (see --help). The binaries are taken from $CARGO_TARGET_DIR when set.
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
