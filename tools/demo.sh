#!/usr/bin/env bash
# The main job: a local walkeeper cluster on loopback, on embedded defaults.
# Starts three safekeepers (node ids 1-3, PostgreSQL-protocol ports 5454-5456,
# HTTP 7676-7678) with their stores under $DEMO_DIR, and stops everything it
# started on Ctrl-C or exit.
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/setup.sh
DEMO_DIR="${DEMO_DIR:-/tmp/walkeeper-demo}"
mkdir -p "$DEMO_DIR"
cargo build --bins
BIN="$CARGO_TARGET_DIR/debug"

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    echo "demo: stopped"
}
trap cleanup EXIT INT TERM

for n in 1 2 3; do
    datadir="$DEMO_DIR/sk$n"
    init=()
    [ -e "$datadir/CURRENT" ] || init=(--init)
    "$BIN/safekeeper" --datadir "$datadir" --node-id "$n" "${init[@]}" \
        --listen-pg "127.0.0.1:$((5453 + n))" --listen-http "127.0.0.1:$((7675 + n))" \
        2>"$DEMO_DIR/sk$n.log" &
    pids+=($!)
done
sleep 1
for n in 1 2 3; do
    if ! kill -0 "${pids[$((n - 1))]}" 2>/dev/null; then
        echo "demo: safekeeper $n failed to start:" >&2
        cat "$DEMO_DIR/sk$n.log" >&2
        exit 1
    fi
done
echo "demo: safekeepers 1-3 listen on 127.0.0.1:5454-5456; logs in $DEMO_DIR/sk*.log"
echo "demo: try: psql 'host=127.0.0.1 port=5454 replication=true' -c IDENTIFY_SYSTEM"
echo "demo: Ctrl-C stops the cluster"
wait
