#!/bin/bash
# tre-postgres's entrypoint: PostgreSQL 15 from Debian's packages for the
# broker replicas (deploy/compose.replicas.yaml). On an empty data volume it
# makes the cluster with one role and database, both "tre", whose password
# is the db_password secret; connections from the network must give it
# (SCRAM). Then it runs the server in the foreground.
set -euo pipefail
: "${PGDATA:?}"
password_file=/run/secrets/db_password

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ ! -s "$password_file" ]; then
    echo "tre-postgres: no password in $password_file (the db_password secret)" >&2
    exit 1
  fi
  initdb --pgdata "$PGDATA" --username tre --pwfile "$password_file" \
    --auth-local trust --auth-host scram-sha-256 --encoding UTF8 --locale C.UTF-8 >/dev/null
  # Any address may connect, with the password: the database network
  # holds the brokers and this server only (compose.replicas.yaml).
  printf 'host tre tre 0.0.0.0/0 scram-sha-256\nhost tre tre ::/0 scram-sha-256\n' >> "$PGDATA/pg_hba.conf"
  echo 'CREATE DATABASE tre OWNER tre' | postgres --single -D "$PGDATA" -c unix_socket_directories= postgres >/dev/null
  echo "tre-postgres: cluster made in $PGDATA"
fi
exec postgres -D "$PGDATA" -c listen_addresses='*' -c unix_socket_directories=/var/run/postgresql "$@"
