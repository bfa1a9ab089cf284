#!/usr/bin/env bash
# A throwaway PostgreSQL server on 127.0.0.1 for the tests of `engine serve --db postgresql://...`.
#
#   bash .ci/postgres-setup.sh          install (Debian's postgresql) if needed, start, print the URL
#   bash .ci/postgres-setup.sh --stop   stop the server this script started
#
# The cluster lives in $PG_STATE (default /tmp/engine-pg), trusts loopback connections of the role
# `engine`, and listens on 127.0.0.1 only (its socket also in $PG_STATE). PostgreSQL refuses to run as
# root, so as root it runs as the `postgres` user the package creates. Idempotent: a running server
# is reused. Never fails the build: when no server can be started it says why on stderr and prints
# nothing, and the PostgreSQL tests skip with that reason.
set -u
STATE=${PG_STATE:-/tmp/engine-pg}
PORT=${PG_PORT:-54329}
say() { echo "postgres-setup: $*" >&2; }

bindir() {
    local pgc
    pgc=$(command -v pg_ctl || ls -d /usr/lib/postgresql/*/bin/pg_ctl 2>/dev/null | sort -V | tail -n1)
    [ -n "$pgc" ] && dirname "$(readlink -f "$pgc")"
}

as_owner() {  # run a server binary as the cluster's owner
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

BIN=$(bindir)
if [ "${1:-}" = --stop ]; then
    [ -n "$BIN" ] && [ -f "$STATE/data/postmaster.pid" ] && as_owner "$BIN/pg_ctl" -D "$STATE/data" -m fast -w stop >/dev/null 2>&1
    say "stopped"; exit 0
fi

if [ -z "$BIN" ]; then
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO="sudo -n"
    { $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends postgresql; } >/dev/null 2>&1 || { say "apt-get install postgresql failed"; exit 0; }
    BIN=$(bindir)
    [ -n "$BIN" ] || { say "postgresql installed but no pg_ctl found"; exit 0; }
fi

URL="postgresql://engine@127.0.0.1:$PORT/engine"
if ! "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT" 2>/dev/null; then
    mkdir -p "$STATE"
    [ "$(id -u)" = 0 ] && chown postgres "$STATE"
    if [ ! -f "$STATE/data/PG_VERSION" ]; then
        as_owner "$BIN/initdb" -D "$STATE/data" -U engine --auth=trust -E UTF8 >"$STATE/initdb.log" 2>&1 \
            || { say "initdb failed: $(tail -n1 "$STATE/initdb.log")"; exit 0; }
    fi
    as_owner "$BIN/pg_ctl" -D "$STATE/data" -l "$STATE/server.log" -w -t 30 \
        -o "-c listen_addresses=127.0.0.1 -p $PORT -k $STATE -c fsync=off" start >/dev/null 2>&1 \
        || { say "the server did not start: $(tail -n2 "$STATE/server.log" 2>/dev/null | tr '\n' ' ')"; exit 0; }
fi
if ! "$BIN/psql" -q -h 127.0.0.1 -p "$PORT" -U engine -d engine -c 'select 1' >/dev/null 2>&1; then
    "$BIN/createdb" -h 127.0.0.1 -p "$PORT" -U engine engine 2>"$STATE/createdb.log" \
        || { say "createdb failed: $(tail -n1 "$STATE/createdb.log")"; exit 0; }
fi
say "PostgreSQL $("$BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PORT"
echo "$URL"
