#!/usr/bin/env bash
# Installs what building and testing walkeeper needs on a fresh Debian
# machine (run as root), and sets the shared cargo target directory.
# Sourced by tools/demo.sh and tools/test.sh; safe to run again.
set -euo pipefail

need_apt=()
# The rocksdb crate generates its bindings with bindgen, which needs libclang.
if ! ls /usr/lib/llvm-*/lib/libclang.so* >/dev/null 2>&1 && ! ldconfig -p | grep -q 'libclang\.so'; then
    need_apt+=(libclang-dev)
fi
# RocksDB's C++ is compiled by the build script.
command -v g++ >/dev/null 2>&1 || need_apt+=(g++)
# Tests and the demo run a real PostgreSQL 15.
[ -x /usr/lib/postgresql/15/bin/postgres ] || need_apt+=(postgresql-15)
command -v psql >/dev/null 2>&1 || need_apt+=(postgresql-client-15)
# The fault suite puts safekeepers in network namespaces (tests/faults.rs).
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
# ... and stores on a FUSE filesystem that fails and loses power on command
# (tests/disk_faults.rs mounts it with fusermount3).
command -v fusermount3 >/dev/null 2>&1 || need_apt+=(fuse3)
# The TLS tests check the HTTPS port with curl.
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "setup: installing ${need_apt[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# PostgreSQL refuses to run as root; tests start it as this user.
id postgres >/dev/null 2>&1 || useradd --system --home /var/lib/postgresql --shell /bin/bash postgres

# One target directory outside the work tree, shared by every clone, session
# and CI run on this machine: RocksDB's C++ takes 20-30 minutes to build.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/walkeeper-target}"
mkdir -p "$CARGO_TARGET_DIR"
export PG_BIN="${PG_BIN:-/usr/lib/postgresql/15/bin}"
