#!/usr/bin/env bash
# The whole test suite: installs what is missing, checks formatting and
# lints, then runs unit, property and integration tests against a real
# Tansu broker and redis-server started by the tests themselves.
#
# To test against external servers instead, set HOTLEAD_TEST_KAFKA
# (bootstrap servers) and HOTLEAD_TEST_REDIS (a Redis URL).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

scripts/setup.sh

echo "test: cargo fmt --check"
cargo fmt --check
echo "test: cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --quiet -- -D warnings
echo "test: deployment files"
scripts/check-deploy.sh
echo "test: cargo test"
cargo test
