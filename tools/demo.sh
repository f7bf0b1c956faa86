#!/usr/bin/env bash
# The main job: a local walkeeper cluster on loopback, on embedded defaults.
#
#   a real PostgreSQL 15 primary (as the postgres user, port 55432) with
#   synchronous_standby_names = 'safekeeper_proxy'
#   three safekeepers (node ids 1-3, ports 5454-5456, HTTP 7676-7678)
#   safekeeper-proxy --create-timeline between them
#
# then a short pgbench whose commits each wait for a majority of
# safekeepers, and each safekeeper's flush and commit LSN beside the
# primary's. The cluster keeps running until Ctrl-C (or exits at once with
# --exit). State lives in $DEMO_DIR (default /tmp/walkeeper-demo).
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/setup.sh
DEMO_DIR="${DEMO_DIR:-/tmp/walkeeper-demo}"
PGPORT_DEMO="${PGPORT_DEMO:-55432}"
EXIT_AFTER=0
[ "${1:-}" = "--exit" ] && EXIT_AFTER=1
mkdir -p "$DEMO_DIR"
chmod 711 "$DEMO_DIR"
cargo build --bins
BIN="$CARGO_TARGET_DIR/debug"
PGDATA_DEMO="$DEMO_DIR/pg"

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PGDATA_DEMO" -m fast -w stop >/dev/null 2>&1 || true
    echo "demo: stopped (state kept in $DEMO_DIR)"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ ! -e "$PGDATA_DEMO/PG_VERSION" ]; then
    install -d -o postgres -g postgres -m 700 "$PGDATA_DEMO"
    runuser -u postgres -- "$PG_BIN/initdb" -D "$PGDATA_DEMO" -A trust -U postgres >/dev/null
    cat >>"$PGDATA_DEMO/postgresql.conf" <<CONF
port = $PGPORT_DEMO
listen_addresses = '127.0.0.1'
unix_socket_directories = '$PGDATA_DEMO'
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
wal_keep_size = '1GB'
synchronous_commit = on
synchronous_standby_names = 'safekeeper_proxy'
CONF
fi
touch "$DEMO_DIR/pg.log" && chown postgres "$DEMO_DIR/pg.log"
runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PGDATA_DEMO" -l "$DEMO_DIR/pg.log" -w start >/dev/null
echo "demo: PostgreSQL primary on 127.0.0.1:$PGPORT_DEMO"

for n in 1 2 3; do
    datadir="$DEMO_DIR/sk$n"
    init=()
    [ -e "$datadir/CURRENT" ] || init=(--init)
    "$BIN/safekeeper" --datadir "$datadir" --node-id "$n" "${init[@]}" \
        --listen-pg "127.0.0.1:$((5453 + n))" --listen-http "127.0.0.1:$((7675 + n))" \
        2>"$DEMO_DIR/sk$n.log" &
    pids+=($!)
done
"$BIN/safekeeper-proxy" --primary "host=127.0.0.1 port=$PGPORT_DEMO user=postgres" \
    --safekeepers 1@127.0.0.1:5454,2@127.0.0.1:5455,3@127.0.0.1:5456 --create-timeline \
    2>"$DEMO_DIR/proxy.log" &
pids+=($!)

psql_primary() { psql -h 127.0.0.1 -p "$PGPORT_DEMO" -U postgres -d postgres -XAtq "$@"; }
for _ in $(seq 1 100); do
    state=$(psql_primary -c "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'safekeeper_proxy'" 2>/dev/null || true)
    [ "$state" = "sync" ] && break
    sleep 0.2
done
if [ "${state:-}" != "sync" ]; then
    echo "demo: the proxy did not become the synchronous standby; logs:" >&2
    tail -n 20 "$DEMO_DIR"/proxy.log "$DEMO_DIR"/sk*.log >&2
    exit 1
fi
echo "demo: safekeeper_proxy is the primary's synchronous standby; running pgbench (commits wait for 2 of 3 safekeepers)"
"$PG_BIN/pgbench" -h 127.0.0.1 -p "$PGPORT_DEMO" -U postgres -i -s 1 -q postgres 2>&1 | tail -n 1
"$PG_BIN/pgbench" -h 127.0.0.1 -p "$PGPORT_DEMO" -U postgres -N -c 4 -T 5 postgres 2>&1 | grep -E "tps|latency average"

sleep 1
printf '\n%-10s %-14s %-14s\n' node flush_lsn commit_lsn
printf '%-10s %-14s %-14s\n' primary "$(psql_primary -c 'SELECT pg_current_wal_flush_lsn()')" "-"
for n in 1 2 3; do
    commit=$(psql "host=127.0.0.1 port=$((5453 + n)) user=postgres replication=true" -XAtc IDENTIFY_SYSTEM 2>/dev/null | cut -d'|' -f3)
    flush=$(curl -s "http://127.0.0.1:$((7675 + n))/v1/timelines" 2>/dev/null | grep -o '"flush_lsn":"[^"]*"' | head -n1 | cut -d'"' -f4 || true)
    printf '%-10s %-14s %-14s\n' "sk$n" "${flush:--}" "${commit:--}"
done
echo
echo "demo: logs in $DEMO_DIR/{pg,proxy,sk1,sk2,sk3}.log"
if [ "$EXIT_AFTER" = 1 ]; then exit 0; fi
echo "demo: the cluster keeps running; try psql -h 127.0.0.1 -p $PGPORT_DEMO -U postgres. Ctrl-C stops it."
wait
