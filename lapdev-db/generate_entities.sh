#!/usr/bin/env bash
# Regenerates lapdev-db/src/entities from the migrations (a developer tool; CI never
# runs it, so the slow sea-orm-cli install stays out of CI).
#
# It creates a throwaway PostgreSQL database, applies every migration to it, runs
# `sea-orm-cli generate entity` (installing the sea-orm-cli version that matches the
# sea-orm in Cargo.lock if needed), formats the result and drops the database again.
# On a clean tree the result is identical to what is committed: `git diff` stays empty.
#
# Needs `psql` and a PostgreSQL server. The admin URL (a database to connect to for
# CREATE/DROP DATABASE) is LAPDEV_ENTITIES_ADMIN_URL, else LAPDEV_TEST_DATABASE_URL,
# else postgres://postgres@127.0.0.1:5432/postgres.
set -euo pipefail
cd "$(dirname "$0")/.."

admin_url="${LAPDEV_ENTITIES_ADMIN_URL:-${LAPDEV_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}}"
admin_url="${admin_url%%\?*}"
server_url="${admin_url%/*}"
out_dir="lapdev-db/src/entities"

# The sea-orm-cli version must match the sea-orm the code is built with.
version="$(awk '$0 == "name = \"sea-orm\"" { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)"
if [[ -z "$version" ]]; then
    echo "sea-orm not found in Cargo.lock" >&2
    exit 1
fi
installed="$(sea-orm-cli --version 2>/dev/null | awk '{ print $2 }' || true)"
if [[ "$installed" != "$version" ]]; then
    echo "installing sea-orm-cli $version (found: ${installed:-none})"
    cargo install "sea-orm-cli@$version" --locked
fi

db="lapdev_entities_$(date +%s)_$$"
psql "$admin_url" -v ON_ERROR_STOP=1 -q -c "CREATE DATABASE \"$db\""
trap 'psql "$admin_url" -q -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null' EXIT

cargo run --quiet -p migrations -- -u "$server_url/$db" up

rm -rf "$out_dir"
sea-orm-cli generate entity \
    --database-url "$server_url/$db" \
    --output-dir "$out_dir" \
    --date-time-crate chrono \
    --with-serde none
# `cargo fmt` formats with the workspace's edition; do the same so CI's check agrees.
rustfmt --edition 2024 "$out_dir"/*.rs
echo "entities regenerated in $out_dir"
