#!/usr/bin/env bash
# Fuzzes the decoder with rule evaluation, and the rules parser, each for a
# bounded time (default 60 s; `scripts/fuzz.sh 300` for five minutes).
# Installs cargo-fuzz when missing. Findings land in fuzz/artifacts/.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
SECONDS_EACH="${1:-60}"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz ..."
  cargo install cargo-fuzz --locked
fi
# libFuzzer's instrumentation needs unstable compiler flags; the stable
# toolchain accepts them with RUSTC_BOOTSTRAP.
export RUSTC_BOOTSTRAP=1
mkdir -p fuzz/corpus/decode_and_score fuzz/corpus/rules_file
cp examples/*.yaml fuzz/corpus/rules_file/
for target in decode_and_score rules_file; do
  echo "fuzz: $target for ${SECONDS_EACH}s"
  cargo fuzz run "$target" -- -max_total_time="$SECONDS_EACH" -rss_limit_mb=4096
done
echo "fuzz: clean"
