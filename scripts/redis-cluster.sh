#!/usr/bin/env bash
# A local Redis Cluster for tests: three primaries and three replicas on loopback.
# Usage: scripts/redis-cluster.sh start|stop|status   (ports 7100-7105; REDIS_CLUSTER_DIR to move its files)
set -euo pipefail
DIR=${REDIS_CLUSTER_DIR:-/tmp/portcullis-redis-cluster}
PORTS=(7100 7101 7102 7103 7104 7105)

start() {
  mkdir -p "$DIR"
  for port in "${PORTS[@]}"; do
    if redis-cli -p "$port" ping >/dev/null 2>&1; then continue; fi
    mkdir -p "$DIR/$port"
    redis-server --port "$port" --bind 127.0.0.1 --cluster-enabled yes \
      --cluster-config-file "$DIR/$port/nodes.conf" --cluster-node-timeout 2000 \
      --save '' --appendonly no --dir "$DIR/$port" --daemonize yes \
      --pidfile "$DIR/$port/redis.pid" --logfile "$DIR/$port/redis.log"
  done
  for port in "${PORTS[@]}"; do
    for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  done
  if ! redis-cli -p 7100 cluster info 2>/dev/null | grep -q 'cluster_state:ok'; then
    redis-cli --cluster create $(printf '127.0.0.1:%s ' "${PORTS[@]}") --cluster-replicas 1 --cluster-yes >/dev/null
    for _ in $(seq 100); do
      redis-cli -p 7100 cluster info | grep -q 'cluster_state:ok' && break
      sleep 0.1
    done
  fi
  redis-cli -p 7100 cluster info | grep cluster_state
}

stop() {
  for port in "${PORTS[@]}"; do
    redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
  done
  rm -rf "$DIR"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) redis-cli -p 7100 cluster info | grep cluster_state ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
