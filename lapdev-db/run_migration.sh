#!/usr/bin/env bash
# Runs Lapdev's database migrations against DATABASE_URL (default: the embedded SQLite
# file ./lapdev-data/lapdev.db, created if missing). Arguments are passed to the
# migrations CLI: `up` (the default), `down`, `status`, `fresh`, ... e.g.
#
#   lapdev-db/run_migration.sh            # apply pending migrations
#   lapdev-db/run_migration.sh status
#   lapdev-db/run_migration.sh down -n 1
#   DATABASE_URL=postgres://postgres@127.0.0.1:5432/lapdev lapdev-db/run_migration.sh up
#
# Relative SQLite paths are relative to the repository root, like the server's default.
set -euo pipefail
cd "$(dirname "$0")/.."

export DATABASE_URL="${DATABASE_URL:-sqlite://./lapdev-data/lapdev.db?mode=rwc}"
if [[ "$DATABASE_URL" == sqlite://./lapdev-data/* ]]; then
    mkdir -p lapdev-data
fi
if [[ $# -eq 0 ]]; then
    set -- up
fi
exec cargo run --quiet -p migrations -- "$@"
