# Provisioning of the services seatledger's tests and benchmarks use:
# PostgreSQL, Redis and NATS with JetStream on loopback, installed from
# Debian's packages and started when they are not answering (needs root).
# Sourced by scripts/test and scripts/bench-report; expects DATABASE_URL.

say() { echo "${SCRIPT_NAME:-scripts}: $*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for_port() {
  local name=$1 port=$2
  for _ in $(seq 1 60); do
    port_open "$port" && return 0
    sleep 0.5
  done
  say "$name did not start on 127.0.0.1:$port"
  exit 1
}

need_root() {
  if [ "$(id -u)" != 0 ]; then
    say "$1 is not answering on 127.0.0.1:$2, and installing or starting it needs root."
    say "Start $1 on 127.0.0.1:$2 (or point $3 at one), or run this script as root."
    exit 1
  fi
}

apt_updated=""
apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  if [ -z "$apt_updated" ]; then
    apt-get update -qq
    apt_updated=1
  fi
  say "installing $* (Debian packages)"
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

ensure_postgres() {
  if ! port_open 5432; then
    need_root PostgreSQL 5432 SEATLEDGER_TEST_DATABASE_URL
    command -v pg_ctlcluster >/dev/null || apt_install postgresql postgresql-client
    local version
    version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1 || true)
    if [ -z "$version" ]; then
      version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
      pg_createcluster "$version" main >/dev/null
    fi
    say "starting PostgreSQL $version on 127.0.0.1:5432"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start 2>/dev/null || pg_ctlcluster "$version" main start
    wait_for_port PostgreSQL 5432
  fi
  # The tests connect over TCP as postgres/postgres. A packaged cluster asks
  # for a password on 127.0.0.1: give the postgres role that password.
  if command -v psql >/dev/null && ! psql "$DATABASE_URL" -qAtc 'SELECT 1' >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && id postgres >/dev/null 2>&1; then
      su postgres -c "psql -qc \"ALTER ROLE postgres PASSWORD 'postgres'\"" >/dev/null
    fi
    psql "$DATABASE_URL" -qAtc 'SELECT 1' >/dev/null || { say "cannot connect to $DATABASE_URL"; exit 1; }
  fi
}

ensure_redis() {
  port_open 6379 && return 0
  need_root Redis 6379 SEATLEDGER_TEST_REDIS_URL
  command -v redis-server >/dev/null || apt_install redis-server
  say "starting Redis on 127.0.0.1:6379"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/seatledger-test.log
  wait_for_port Redis 6379
}

ensure_nats() {
  port_open 4222 && return 0
  need_root "NATS (JetStream)" 4222 SEATLEDGER_TEST_NATS_URL
  command -v nats-server >/dev/null || apt_install nats-server
  say "starting NATS with JetStream on 127.0.0.1:4222"
  mkdir -p /var/lib/nats-server
  nohup nats-server -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server >/var/log/nats-server-seatledger-test.log 2>&1 &
  wait_for_port NATS 4222
}

# The Redis and NATS fault tests start private redis-server and nats-server
# processes of their own (on free loopback ports), so the binaries are
# needed even when a Redis or a NATS already answers on the usual port.
ensure_binary() { # command package
  command -v "$1" >/dev/null && return 0
  if [ "$(id -u)" != 0 ]; then
    say "$1 is not installed (the fault tests run their own), and installing it needs root."
    exit 1
  fi
  apt_install "$2"
}

# The fault tests start a PostgreSQL of their own (initdb and pg_ctl under
# /usr/lib/postgresql/N/bin, run as the postgres user when root), even
# when DATABASE_URL points at another server.
ensure_postgres_server_binaries() {
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null && return 0
  if [ "$(id -u)" != 0 ]; then
    say "initdb is not installed (the fault tests run a PostgreSQL of their own), and installing it needs root."
    exit 1
  fi
  apt_install postgresql
}

ensure_services() {
  ensure_binary make make # tikv-jemalloc-sys builds jemalloc with make
  ensure_postgres_server_binaries
  case "$DATABASE_URL" in *127.0.0.1:5432*|*localhost:5432*) ensure_postgres ;; esac
  ensure_binary redis-server redis-server
  ensure_binary nats-server nats-server
  ensure_binary curl curl # the README walk-through test pastes it into bash
  ensure_binary openssl openssl # the key tests make key files with the standard tool
  ensure_binary psql postgresql-client # the contract run creates its database
  case "${SEATLEDGER_TEST_REDIS_URL:-redis://127.0.0.1:6379}" in *127.0.0.1:6379*|*localhost:6379*) ensure_redis ;; esac
  case "${SEATLEDGER_TEST_NATS_URL:-nats://127.0.0.1:4222}" in *127.0.0.1:4222*|*localhost:4222*) ensure_nats ;; esac
}
