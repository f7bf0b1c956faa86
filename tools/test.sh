#!/usr/bin/env bash
# The whole test suite: unit tests, the acceptor rules, the store, the
# consensus simulation and the end-to-end tests against a real PostgreSQL 15.
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/setup.sh
cargo test --no-run
cargo test -- --test-threads="${TEST_THREADS:-2}"
