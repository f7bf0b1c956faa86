#!/usr/bin/env bash
# Commit latency and throughput of one PostgreSQL 15 primary under four ways
# of making commits durable elsewhere, measured in one run on one initdb:
#
#   A  safekeeper-proxy + 3 safekeepers   synchronous_standby_names = 'safekeeper_proxy'
#   B  PostgreSQL's own quorum            synchronous_standby_names = 'ANY 2 (r1,r2,r3)'
#      over three pg_receivewal --synchronous (own slot, own directory each)
#   C  one pg_receivewal --synchronous    synchronous_standby_names = 'r1'
#   D  no synchronous standby             synchronous_standby_names = ''
#
# All consumers (proxy and three pg_receivewal) stream the whole time; only
# synchronous_standby_names changes between configurations (ALTER SYSTEM +
# pg_reload_conf, then wait until pg_stat_replication shows the expected
# sync/quorum state). Each round runs the configurations in the palindrome
# order given by BENCH_ORDER (default ABCDDCBA), so every configuration is
# measured twice per round, once early and once late. Each measurement is
# `pgbench -N` for BENCH_SECONDS at 8 clients, then at 1 client, both with
# per-transaction logs (-l); a CHECKPOINT precedes each pgbench run.
#
# Environment:
#   BENCH_ROUNDS   rounds (default 3)         BENCH_SECONDS  seconds per pgbench run (default 10)
#   BENCH_QUICK=1  one round of 5 s runs      BENCH_ORDER    configurations per round (default ABCDDCBA)
#   BENCH_DIR      working directory (default: a new temp dir, removed on exit unless BENCH_KEEP=1)
#   BENCH_SCALE    pgbench -i scale (default 10)
#   BENCH_WARMUP   seconds of unmeasured pgbench before the first round (default 30; 0: none)
#   BENCH_OUT      also write the results table to this file
#   BENCH_NO_BUILD=1  do not run cargo build --bins first
#   BENCH_BIN      directory of the safekeeper and safekeeper-proxy binaries (default: $CARGO_TARGET_DIR/debug)
#   BENCH_SK_ARGS  extra safekeeper flags, e.g. "--background-write-limit 32MB"
#
# Everything started here (postgres as the postgres user, safekeepers,
# proxy, pg_receivewal) is stopped on exit. Ports are free loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/setup.sh

if [ "${BENCH_QUICK:-0}" = 1 ]; then
    ROUNDS="${BENCH_ROUNDS:-1}"
    SECONDS_RUN="${BENCH_SECONDS:-5}"
else
    ROUNDS="${BENCH_ROUNDS:-3}"
    SECONDS_RUN="${BENCH_SECONDS:-10}"
fi
ORDER="${BENCH_ORDER:-ABCDDCBA}"
WARMUP="${BENCH_WARMUP:-30}"
SCALE="${BENCH_SCALE:-10}"
if [ -n "${BENCH_DIR:-}" ]; then
    DIR="$BENCH_DIR"
    mkdir -p "$DIR"
    OWN_DIR=0
else
    DIR="$(mktemp -d /tmp/walkeeper-bench.XXXXXX)"
    OWN_DIR=1
fi
DIR="$(cd "$DIR" && pwd)"
chmod 711 "$DIR"
[ "${BENCH_NO_BUILD:-0}" = 1 ] || cargo build --bins
BIN="${BENCH_BIN:-$CARGO_TARGET_DIR/debug}"
PGDATA_B="$DIR/pg"
LOGS="$DIR/logs"
RUNS="$DIR/runs"
mkdir -p "$LOGS" "$RUNS"

log() { printf 'bench: %s\n' "$*" >&2; }

# ---------------------------------------------------------------- ports
used_ports=" "
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() {
    local p
    for _ in $(seq 1 200); do
        p=$((20000 + RANDOM % 30000))
        case "$used_ports" in *" $p "*) continue ;; esac
        if port_free "$p"; then
            used_ports+="$p "
            echo "$p"
            return 0
        fi
    done
    echo "bench: no free port" >&2
    return 1
}
PGPORT_B=$(free_port)
SK_PG=() SK_HTTP=()
for n in 1 2 3; do SK_PG[$n]=$(free_port); SK_HTTP[$n]=$(free_port); done

# ---------------------------------------------------------------- cleanup
declare -A PIDS=()
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    # Consumers first: a fast shutdown otherwise waits for them to confirm.
    for name in "${!PIDS[@]}"; do kill -TERM "${PIDS[$name]}" 2>/dev/null || true; done
    for name in "${!PIDS[@]}"; do wait "${PIDS[$name]}" 2>/dev/null || true; done
    if [ -e "$PGDATA_B/postmaster.pid" ]; then
        runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PGDATA_B" -m fast -w stop >/dev/null 2>&1 ||
            runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PGDATA_B" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    if [ "$OWN_DIR" = 1 ] && [ "${BENCH_KEEP:-0}" != 1 ]; then
        rm -rf "$DIR"
    else
        log "state and logs kept in $DIR"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

PSQL=(psql -h 127.0.0.1 -p "$PGPORT_B" -U postgres -d postgres -XAtq)
psql_p() { "${PSQL[@]}" "$@"; }
connstr() { echo "host=127.0.0.1 port=$PGPORT_B user=postgres${1:+ application_name=$1}"; }

# ---------------------------------------------------------------- primary
log "directory $DIR; primary on 127.0.0.1:$PGPORT_B; safekeepers on ${SK_PG[*]} (http ${SK_HTTP[*]})"
install -d -o postgres -g postgres -m 700 "$PGDATA_B"
runuser -u postgres -- "$PG_BIN/initdb" -D "$PGDATA_B" -A trust -U postgres >/dev/null
cat >>"$PGDATA_B/postgresql.conf" <<CONF
port = $PGPORT_B
listen_addresses = '127.0.0.1'
unix_socket_directories = '$PGDATA_B'
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
synchronous_commit = on
fsync = on
synchronous_standby_names = ''
shared_buffers = '256MB'
max_wal_size = '4GB'
checkpoint_timeout = '30min'
CONF
touch "$LOGS/pg.log" && chown postgres "$LOGS/pg.log"
runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PGDATA_B" -l "$LOGS/pg.log" -w start >/dev/null
log "pgbench -i -s $SCALE"
pgbench -h 127.0.0.1 -p "$PGPORT_B" -U postgres -i -s "$SCALE" -q postgres >"$LOGS/pgbench-init.log" 2>&1
psql_p -c "CREATE TABLE bench_probe (x int)"

# ---------------------------------------------------------------- consumers
for n in 1 2 3; do
    RUST_LOG="${RUST_LOG:-info}" "$BIN/safekeeper" --datadir "$DIR/sk$n" --node-id "$n" --init \
        --listen-pg "127.0.0.1:${SK_PG[$n]}" --listen-http "127.0.0.1:${SK_HTTP[$n]}" \
        ${BENCH_SK_ARGS:-} 2>"$LOGS/sk$n.log" &
    PIDS[sk$n]=$!
done
sleep 0.5
RUST_LOG="${RUST_LOG:-info}" "$BIN/safekeeper-proxy" --primary "$(connstr)" \
    --safekeepers "1@127.0.0.1:${SK_PG[1]},2@127.0.0.1:${SK_PG[2]},3@127.0.0.1:${SK_PG[3]}" \
    --create-timeline 2>"$LOGS/proxy.log" &
PIDS[proxy]=$!
for r in r1 r2 r3; do
    mkdir -p "$DIR/$r"
    pg_receivewal --create-slot --slot="$r" -d "$(connstr "$r")" >>"$LOGS/$r.log" 2>&1
    pg_receivewal --synchronous --slot="$r" -D "$DIR/$r" -d "$(connstr "$r")" --no-password \
        >>"$LOGS/$r.log" 2>&1 &
    PIDS[$r]=$!
done

# ---------------------------------------------------------------- configurations
ssn_of() {
    case "$1" in
        A) echo "safekeeper_proxy" ;;
        B) echo "ANY 2 (r1,r2,r3)" ;;
        C) echo "r1" ;;
        D) echo "" ;;
    esac
}
# The pg_stat_replication state expected once a configuration is in force:
# application_name:sync_state for every consumer, sorted.
expected_state() {
    case "$1" in
        A) echo "r1:async r2:async r3:async safekeeper_proxy:sync" ;;
        B) echo "r1:quorum r2:quorum r3:quorum safekeeper_proxy:async" ;;
        C) echo "r1:sync r2:async r3:async safekeeper_proxy:async" ;;
        D) echo "r1:async r2:async r3:async safekeeper_proxy:async" ;;
    esac
}
current_state() {
    psql_p -c "SELECT string_agg(application_name || ':' || sync_state, ' ' ORDER BY application_name)
               FROM pg_stat_replication WHERE state = 'streaming'" 2>/dev/null || true
}
switch_to() {
    local cfg=$1 want state=""
    psql_p -c "ALTER SYSTEM SET synchronous_standby_names = '$(ssn_of "$cfg")'" -c "SELECT pg_reload_conf()" >/dev/null
    want=$(expected_state "$cfg")
    for _ in $(seq 1 300); do
        state=$(current_state)
        [ "$state" = "$want" ] && break
        sleep 0.1
    done
    if [ "$state" != "$want" ]; then
        log "configuration $cfg: pg_stat_replication shows '$state', expected '$want'; logs:"
        tail -n 15 "$LOGS"/proxy.log "$LOGS"/sk*.log "$LOGS"/r*.log "$LOGS"/pg.log >&2
        exit 1
    fi
    # A commit now must complete: proves the sync standbys answer.
    timeout 30 "${PSQL[@]}" -c "INSERT INTO bench_probe VALUES (1)" >/dev/null
}

# Counters of one process: write syscalls and CPU ticks (utime+stime).
proc_counters() {
    local pid=$1 syscw ticks
    syscw=$(awk '/^syscw:/ {print $2}' "/proc/$pid/io" 2>/dev/null || echo 0)
    ticks=$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)
    echo "$syscw $ticks"
}
# Safekeeper group-commit counters: requests batches fsync_sum fsync_count append_sum append_count wal_bytes
sk_counters() {
    curl -s "http://127.0.0.1:$1/metrics" | awk '
        /^walkeeper_write_requests_total / {r=$2}
        /^walkeeper_sync_batches_total / {b=$2}
        /^walkeeper_fsync_seconds_sum / {fs=$2}
        /^walkeeper_fsync_seconds_count / {fc=$2}
        /^walkeeper_append_seconds_sum / {as=$2}
        /^walkeeper_append_seconds_count / {ac=$2}
        /^walkeeper_wal_written_bytes_total / {w=$2}
        END {printf "%s %s %s %s %s %s %s\n", r+0, b+0, fs+0, fc+0, as+0, ac+0, w+0}'
}
snapshot() {
    local out=$1
    {
        echo "wal_lsn $(psql_p -c "SELECT pg_current_wal_lsn() - '0/0'")"
        echo "proxy $(proc_counters "${PIDS[proxy]}")"
        for n in 1 2 3; do
            echo "sk$n $(proc_counters "${PIDS[sk$n]}") $(sk_counters "${SK_HTTP[$n]}")"
        done
        for r in r1 r2 r3; do echo "$r $(proc_counters "${PIDS[$r]}")"; done
        echo "xact_commit $(psql_p -c "SELECT xact_commit FROM pg_stat_database WHERE datname = 'postgres'")"
    } >"$out"
}

# One pgbench run; leaves pgbench's output and per-transaction logs in $run.
pgbench_run() {
    local run=$1 clients=$2
    mkdir -p "$run"
    psql_p -c CHECKPOINT >/dev/null
    snapshot "$run/before"
    (cd "$run" && pgbench -h 127.0.0.1 -p "$PGPORT_B" -U postgres -N -c "$clients" -j "$((clients > 1 ? 2 : 1))" \
        -T "$SECONDS_RUN" -l --log-prefix=tx postgres >"$run/out" 2>&1) || {
        log "pgbench failed in $run:"; cat "$run/out" >&2; exit 1; }
    snapshot "$run/after"
    # The check that this run's commits really waited in this configuration.
    psql_p -c "SELECT coalesce(string_agg(application_name || ':' || sync_state, ' ' ORDER BY application_name), '')
               FROM pg_stat_replication WHERE state = 'streaming'" >"$run/state"
}

tps_of() { sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$1/out"; }
lat_of() { sed -n 's/^latency average = \([0-9.]*\) ms/\1/p' "$1/out"; }
# pgbench -l: client_id transaction_no time(µs) script_no epoch epoch_us
p99_of() { cat "$1"/tx.* | awk '{print $3}' | sort -n | awk '{a[NR]=$1} END {i=int(NR*0.99+0.999); if (i<1) i=1; printf "%.2f\n", a[i]/1000}'; }
max_of() { cat "$1"/tx.* | awk 'BEGIN{m=0} $3>m {m=$3} END {printf "%.2f\n", m/1000}'; }

# Warm-up, unmeasured: new stores and logs are slower than steady state
# (a fresh RocksDB log file grows with every synced write until recycled
# log files are in use; pg_receivewal zero-fills its first segments), and
# whichever configuration ran first would pay for it.
if [ "$WARMUP" -gt 0 ]; then
    switch_to D
    log "warm-up: pgbench -N -c 8 for $WARMUP s with no synchronous standby (every consumer streams)"
    pgbench -h 127.0.0.1 -p "$PGPORT_B" -U postgres -N -c 8 -j 2 -T "$WARMUP" postgres >"$LOGS/warmup.log" 2>&1 || {
        log "warm-up pgbench failed:"; cat "$LOGS/warmup.log" >&2; exit 1; }
fi

total=$((ROUNDS * ${#ORDER}))
i=0
for round in $(seq 1 "$ROUNDS"); do
    for ((k = 0; k < ${#ORDER}; k++)); do
        cfg=${ORDER:$k:1}
        i=$((i + 1))
        switch_to "$cfg"
        base="$RUNS/r${round}-$(printf '%02d' "$k")-$cfg"
        pgbench_run "$base-c8" 8
        pgbench_run "$base-c1" 1
        log "[$i/$total] round $round $cfg: 8 clients $(tps_of "$base-c8") tps, avg $(lat_of "$base-c8") ms; 1 client $(tps_of "$base-c1") tps, p99 $(p99_of "$base-c1") ms"
    done
done
switch_to D

# ---------------------------------------------------------------- report
median() { sort -n | awk '{a[NR]=$1} END {if (NR==0) {print "nan"; exit} if (NR%2) print a[(NR+1)/2]; else printf "%.2f\n", (a[NR/2]+a[NR/2+1])/2}'; }
declare -A T8 L8 T1 L1 P1 MX N
for cfg in A B C D; do
    runs8=("$RUNS"/*-"$cfg"-c8)
    runs1=("$RUNS"/*-"$cfg"-c1)
    [ -d "${runs8[0]}" ] || continue
    N[$cfg]=${#runs8[@]}
    T8[$cfg]=$(for r in "${runs8[@]}"; do tps_of "$r"; done | median)
    L8[$cfg]=$(for r in "${runs8[@]}"; do lat_of "$r"; done | median)
    T1[$cfg]=$(for r in "${runs1[@]}"; do tps_of "$r"; done | median)
    L1[$cfg]=$(for r in "${runs1[@]}"; do lat_of "$r"; done | median)
    P1[$cfg]=$(for r in "${runs1[@]}"; do p99_of "$r"; done | median)
    MX[$cfg]=$(for r in "${runs8[@]}" "${runs1[@]}"; do max_of "$r"; done | sort -n | tail -n1)
done
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else printf "-" }'; }
declare -A NAME=([A]="A proxy+3 safekeepers" [B]="B ANY 2 (r1,r2,r3)" [C]="C one pg_receivewal" [D]="D no sync standby")
{
    echo "pgbench -N, scale $SCALE, $SECONDS_RUN s per run, $ROUNDS round(s) of $ORDER; medians of n runs per configuration"
    echo
    printf '| %-22s | %2s | %9s | %11s | %9s | %11s | %11s | %6s | %6s | %7s | %12s |\n' \
        configuration n "tps c=8" "avg ms c=8" "tps c=1" "avg ms c=1" "p99 ms c=1" "c8 /B" "c1 /B" "p99 /B" "worst tx ms"
    printf '|%s|\n' "------------------------|----|-----------|-------------|-----------|-------------|-------------|--------|--------|---------|--------------"
    for cfg in A B C D; do
        [ -n "${N[$cfg]:-}" ] || continue
        printf '| %-22s | %2s | %9s | %11s | %9s | %11s | %11s | %6s | %6s | %7s | %12s |\n' \
            "${NAME[$cfg]}" "${N[$cfg]}" "${T8[$cfg]}" "${L8[$cfg]}" "${T1[$cfg]}" "${L1[$cfg]}" "${P1[$cfg]}" \
            "$(ratio "${T8[$cfg]}" "${T8[B]:-0}")" "$(ratio "${T1[$cfg]}" "${T1[B]:-0}")" \
            "$(ratio "${P1[$cfg]}" "${P1[B]:-0}")" "${MX[$cfg]}"
    done
    echo
    echo "worst tx = the slowest single pgbench transaction (5 statements + commit) in any run of that configuration."
} | tee "${BENCH_OUT:-/dev/null}"

# ---------------------------------------------------------------- where the time goes
delta_report() {
    # Sums over all runs of one configuration at a given client count.
    local cfg=$1 clients=$2
    local runs=("$RUNS"/*-"$cfg"-c"$clients")
    [ -d "${runs[0]}" ] || return 0
    for r in "${runs[@]}"; do paste -d' ' "$r/before" "$r/after"; done | awk -v cfg="$cfg" -v c="$clients" -v hz="$(getconf CLK_TCK)" '
        $1 == "wal_lsn"     { wal += $4 - $2 }
        $1 == "xact_commit" { tx += $4 - $2 }
        $1 == "proxy"       { pw += $5 - $2; pcpu += $6 - $3 }
        $1 ~ /^sk/ {
            # name syscw ticks req batches fs fc as ac wal | name syscw ticks req batches fs fc as ac wal
            sw += $12 - $2; scpu += $13 - $3; req += $14 - $4; bat += $15 - $5
            fs += $16 - $6; fc += $17 - $7; as += $18 - $8; ac += $19 - $9; skw += $20 - $10 }
        $1 ~ /^r[123]$/     { rw += $5 - $2; rcpu += $6 - $3 }
        END {
            if (tx == 0) tx = 1
            printf "%s, %d client(s): %d commits, %.0f bytes of WAL per commit\n", cfg, c, tx, wal / tx
            printf "  proxy: %.2f write syscalls per commit, %.0f us CPU per commit\n", pw / tx, pcpu * 1e6 / hz / tx
            if (bat > 0) printf "  safekeepers (3 together): %.2f requests per synced batch, %.2f batches per commit per node, fsync mean %.2f ms, append (submit->synced) mean %.2f ms, %.0f us CPU per commit per node\n", req / bat, bat / 3 / tx, fs / (fc ? fc : 1) * 1000, as / (ac ? ac : 1) * 1000, scpu * 1e6 / hz / tx / 3
            printf "  pg_receivewal (mean of 3): %.2f write syscalls per commit each, %.0f us CPU per commit each\n", rw / 3 / tx, rcpu * 1e6 / hz / tx / 3
        }'
}
{
    echo
    for cfg in A B C D; do delta_report "$cfg" 8; delta_report "$cfg" 1; done
} | tee -a "${BENCH_OUT:-/dev/null}"
