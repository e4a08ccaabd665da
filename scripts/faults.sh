#!/usr/bin/env bash
# The fault harness in one command: three hotlead instances under kill -9,
# a zombie, a Redis restart from its AOF and instances coming and going,
# checked against an offline oracle. Prints lost / duplicated / unexpected
# counts and exits non-zero if anything was lost or unexpected.
#
#   scripts/faults.sh            the short run (also part of scripts/test.sh)
#   scripts/faults.sh --long     the long run: about 200 s of stream, 20+ kills
#   scripts/faults.sh --seed 42  another seeded run
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

while [ $# -gt 0 ]; do
  case "$1" in
    --long) export HOTLEAD_FAULTS=long ;;
    --seed) export HOTLEAD_FAULTS_SEED="$2"; shift ;;
    *) echo "usage: scripts/faults.sh [--long] [--seed N]" >&2; exit 2 ;;
  esac
  shift
done

scripts/setup.sh
cargo test --release --test faults -- --nocapture
