#!/usr/bin/env bash
# Make sure PostgreSQL and Redis answer on 127.0.0.1 for the integration tests.
# Start them if installed, install them (Debian) if not and we are root. Under CI=true a
# missing service is an error; elsewhere the integration tests skip with a message.
set -uo pipefail
pg_host=${DEFECTSCAN_TEST_PG_HOST:-127.0.0.1}
pg_port=${DEFECTSCAN_TEST_PG_PORT:-5432}
redis_port=${DEFECTSCAN_TEST_REDIS_PORT:-6379}

up() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

wait_up() {
  for _ in $(seq 1 30); do up "$1" "$2" && return 0; sleep 1; done
  return 1
}

ensure_postgres() {
  up "$pg_host" "$pg_port" && return 0
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "PostgreSQL missing: installing it"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >/dev/null 2>&1
    conf=$(ls -d /etc/postgresql/*/main 2>/dev/null | head -n 1)
    if [ -n "$conf" ]; then
      sed -i 's/^\(host\|local\)\(.*\)\(peer\|scram-sha-256\|md5\)$/\1\2trust/' "$conf/pg_hba.conf"
    fi
  fi
  if command -v pg_ctlcluster >/dev/null && ls /etc/postgresql/*/main >/dev/null 2>&1; then
    ver=$(ls /etc/postgresql | head -n 1)
    pg_ctlcluster --skip-systemctl-redirect "$ver" main start >/dev/null 2>&1 || true
    wait_up "$pg_host" "$pg_port" || return 1
    psql -h "$pg_host" -p "$pg_port" -U postgres -tc "SELECT 1 FROM pg_database WHERE datname='test'" 2>/dev/null | grep -q 1 \
      || psql -h "$pg_host" -p "$pg_port" -U postgres -c "CREATE DATABASE test" >/dev/null 2>&1 || true
    return 0
  fi
  return 1
}

ensure_redis() {
  up 127.0.0.1 "$redis_port" && return 0
  if ! command -v redis-server >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "Redis missing: installing it"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server) >/dev/null 2>&1
  fi
  if command -v redis-server >/dev/null; then
    mkdir -p /tmp/defectscan-redis
    redis-server --daemonize yes --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no \
      --dir /tmp/defectscan-redis --logfile /tmp/defectscan-redis/redis.log >/dev/null 2>&1 || true
    wait_up 127.0.0.1 "$redis_port" && return 0
  fi
  return 1
}

status=0
ensure_postgres || { echo "PostgreSQL is not reachable on $pg_host:$pg_port"; status=1; }
ensure_redis || { echo "Redis is not reachable on 127.0.0.1:$redis_port"; status=1; }
if [ "$status" != 0 ]; then
  if [ "${CI:-}" = "true" ]; then
    echo "CI=true: the integration tests need these services; failing." >&2
    exit 1
  fi
  echo "warning: integration tests will be skipped (set CI=true to make this an error)" >&2
fi
exit 0
