#!/usr/bin/env bash
# A local Redis Cluster for tests: three primaries and three replicas on loopback.
# Usage: scripts/redis-cluster.sh start|stop|restart|status
#   REDIS_CLUSTER_PORT: first of six ports (default 7100); REDIS_CLUSTER_DIR: where its files go.
set -euo pipefail
BASE=${REDIS_CLUSTER_PORT:-7100}
DIR=${REDIS_CLUSTER_DIR:-/tmp/portcullis-redis-cluster-$BASE}
PORTS=($BASE $((BASE + 1)) $((BASE + 2)) $((BASE + 3)) $((BASE + 4)) $((BASE + 5)))

# Output is captured before matching: `redis-cli | grep -q` under pipefail can fail on SIGPIPE.
cluster_ok() {
  local info
  info=$(redis-cli -p "$BASE" cluster info 2>/dev/null) || return 1
  [[ "$info" == *cluster_state:ok* ]]
}

start() {
  mkdir -p "$DIR"
  for port in "${PORTS[@]}"; do
    if redis-cli -p "$port" ping >/dev/null 2>&1; then continue; fi
    mkdir -p "$DIR/$port"
    redis-server --port "$port" --bind 127.0.0.1 --cluster-enabled yes \
      --cluster-config-file "$DIR/$port/nodes.conf" --cluster-node-timeout 2000 \
      --cluster-replica-validity-factor 0 \
      --save '' --appendonly no --dir "$DIR/$port" --daemonize yes \
      --pidfile "$DIR/$port/redis.pid" --logfile "$DIR/$port/redis.log"
  done
  for port in "${PORTS[@]}"; do
    for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  done
  if ! cluster_ok; then
    # Nodes left over from an earlier run (keys, or a half-formed cluster) refuse to join a new
    # cluster: empty them and forget their old peers first.
    for port in "${PORTS[@]}"; do
      redis-cli -p "$port" flushall >/dev/null 2>&1 || true
      redis-cli -p "$port" cluster reset hard >/dev/null 2>&1 || true
    done
    local log
    if ! log=$(redis-cli --cluster create $(printf '127.0.0.1:%s ' "${PORTS[@]}") \
      --cluster-replicas 1 --cluster-yes 2>&1); then
      echo "$log" >&2
      exit 1
    fi
    for _ in $(seq 100); do
      cluster_ok && break
      sleep 0.1
    done
  fi
  # Ready when every replica has synced from its primary (so a failover can promote it).
  for _ in $(seq 200); do
    synced=0
    for port in "${PORTS[@]}"; do
      case "$(redis-cli -p "$port" info replication 2>/dev/null)" in
        *master_link_status:up*) synced=$((synced + 1)) ;;
      esac
    done
    [ "$synced" -ge 3 ] && break
    sleep 0.1
  done
  if ! cluster_ok; then
    echo "redis cluster on $BASE did not come up:" >&2
    redis-cli -p "$BASE" cluster info >&2 || true
    exit 1
  fi
  echo "cluster_state:ok"
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
  restart) stop; start ;;
  status) redis-cli -p $BASE cluster info | grep cluster_state ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
