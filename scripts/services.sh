#!/usr/bin/env bash
# Make sure Redis and RabbitMQ (with its management plugin) run on 127.0.0.1,
# starting them when they are down. Safe to run again and again.
set -euo pipefail

say() { echo "services: $*"; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

install_missing() {  # command package
  command -v "$1" >/dev/null 2>&1 && return 0
  say "installing $2"
  as_root apt-get update -qq && as_root apt-get install -y -qq "$2" >/dev/null
}

wait_for() {  # seconds description command...
  local seconds=$1 what=$2; shift 2
  for _ in $(seq 1 $((seconds * 2))); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  say "$what did not come up in ${seconds}s" >&2
  return 1
}

if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  install_missing redis-server redis-server
  say "starting Redis"
  as_root mkdir -p /var/lib/redis /var/log/redis
  as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" \
    --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
  wait_for 20 Redis redis-cli -h 127.0.0.1 -p 6379 ping
fi
say "Redis is up"

if ! rabbitmq-diagnostics -q ping >/dev/null 2>&1; then
  install_missing rabbitmq-server rabbitmq-server
  say "starting RabbitMQ"
  as_root rabbitmq-server -detached
  # await_startup fails at once until the node has registered: ping first.
  wait_for 90 RabbitMQ rabbitmq-diagnostics -q ping
  rabbitmqctl await_startup >/dev/null
fi
say "RabbitMQ is up"

if ! rabbitmq-plugins list -e -m 2>/dev/null | grep -qx rabbitmq_management; then
  say "enabling the RabbitMQ management plugin"
  rabbitmq-plugins enable rabbitmq_management >/dev/null
fi
install_missing curl curl
wait_for 60 "the RabbitMQ management API" curl -sf -u guest:guest http://127.0.0.1:15672/api/overview
say "RabbitMQ management API is up on http://127.0.0.1:15672"
