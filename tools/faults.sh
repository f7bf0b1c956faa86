#!/usr/bin/env bash
# The long run of the fault suite (README, "The fault suite"): one seeded
# schedule of partitions and kills under a ledger, ending with --sync-only,
# a standby fed only from the safekeepers and skctl verify. Prints the
# figures on a line starting with FAULTS.
#
#   tools/faults.sh [COUNT [SEED [MAX_HOLD_MS]]]
#
# COUNT faults (default 2000), holds of 0.5 s to MAX_HOLD_MS (default
# 4000; the short run in the test suite uses 12000, past the proxy's 10 s
# response timeout). The same SEED replays the same schedule.
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/setup.sh
export FAULTS_COUNT="${1:-2000}" FAULTS_SEED="${2:-$(date +%s)}" FAULTS_MAX_HOLD_MS="${3:-4000}"
echo "faults: FAULTS_COUNT=$FAULTS_COUNT FAULTS_SEED=$FAULTS_SEED FAULTS_MAX_HOLD_MS=$FAULTS_MAX_HOLD_MS" >&2
log="$CARGO_TARGET_DIR/faults-$FAULTS_SEED.log"
echo "faults: full output in $log" >&2
status=0
cargo test --test faults partitions_under_a_ledger_lose_no_acknowledged_commit -- --nocapture >"$log" 2>&1 || status=$?
grep -E -A1 '^(FAULTS |test result|thread .* panicked|SKIPPED)' "$log" || true
exit "$status"
