#!/usr/bin/env bash
# A real multi-node Ray cluster plus an MLflow tracking server on one Linux machine.
#
# Every node lives in its own network namespace; the namespaces are joined by veth pairs to a
# Linux bridge that itself lives in a namespace, so no address outside them is ever used:
#
#   NAME-br   bridge br0 (no address)
#   NAME-head 10.123.0.1   ray head (GCS :6379, dashboard/jobs :8265), mlflow server :5000
#   NAME-w1   10.123.0.2   ray worker
#   NAME-w2   10.123.0.3   ray worker
#
# Ray token authentication is on; the token is written to DIR/token and DIR/env. Shared storage
# (Tune checkpoints, MLflow artifacts) is DIR/shared: the nodes share this machine's filesystem,
# as nodes of a real cluster share NFS or a bucket.
#
# Usage (as root, from the repository, after `make demo` or `make test` made .venv):
#   infra/local/cluster.sh up            start everything, print how to use it
#   infra/local/cluster.sh exec CMD...   run CMD in the head namespace with the cluster's env
#   infra/local/cluster.sh status        nodes and servers
#   infra/local/cluster.sh kill-node w1  SIGKILL every process of one worker node (failure drills)
#   infra/local/cluster.sh down          stop exactly what `up` started, remove the namespaces
#
# Settings (environment): TSC_NAME (default tsc), TSC_DIR (default /tmp/tsc-$TSC_NAME),
# TSC_SUBNET (default 10.123.0), TSC_CPUS (logical CPUs per node, default 1),
# TSC_BIN (directory holding ray, mlflow and tsearch; default .venv/bin of this repository).
set -euo pipefail

NAME=${TSC_NAME:-tsc}
DIR=${TSC_DIR:-/tmp/tsc-$NAME}
SUBNET=${TSC_SUBNET:-10.123.0}
CPUS=${TSC_CPUS:-1}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=${TSC_BIN:-$REPO/.venv/bin}
NODES=(head w1 w2)
BR=$NAME-br
HEAD_IP=$SUBNET.1
GCS_PORT=6379
DASH_PORT=8265
MLFLOW_PORT=5000

die() { echo "cluster.sh: $*" >&2; exit 1; }
ns() { echo "$NAME-$1"; }
node_ip() { case $1 in head) echo "$SUBNET.1" ;; w1) echo "$SUBNET.2" ;; w2) echo "$SUBNET.3" ;; *) die "unknown node $1 (head, w1, w2)" ;; esac; }
in_ns() { local n=$1; shift; ip netns exec "$(ns "$n")" "$@"; }
cluster_env() { set -a; . "$DIR/env"; set +a; }

preflight() {
    [[ $(id -u) == 0 ]] || die "network namespaces need root: run as root (sudo -E $0 $*)"
    command -v ip >/dev/null || die "ip (iproute2) not found: apt-get install iproute2"
    for tool in ray mlflow tsearch; do
        [[ -x $BIN/$tool ]] || die "$BIN/$tool not found: run 'make test' (creates .venv) or set TSC_BIN"
    done
}

wait_for() {  # wait_for SECONDS DESCRIPTION CMD...
    local limit=$1 what=$2; shift 2
    local t0=$SECONDS
    until "$@" >/dev/null 2>&1; do
        (( SECONDS - t0 < limit )) || { echo "cluster.sh: timed out after ${limit}s waiting for $what; logs in $DIR/logs" >&2; return 1; }
        sleep 1
    done
}

alive_nodes() {  # number of alive Ray nodes, asked from the head namespace with the token
    # The token is read from its file (mode 600), never put on a command line: anyone can read
    # the process table. An inherited RAY_AUTH_TOKEN would win over the file, so it is dropped.
    in_ns head env -u RAY_AUTH_TOKEN RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$DIR/token" \
        "$BIN/python" - "$HEAD_IP:$GCS_PORT" <<'EOF' 2>/dev/null
import sys
from ray.util.state import list_nodes
print(sum(1 for n in list_nodes(address=sys.argv[1]) if n.state == "ALIVE"))
EOF
}

three_alive() { [[ $(alive_nodes) == 3 ]]; }

up() {
    preflight
    ip netns list | grep -qw "$(ns head)" && die "cluster $NAME is already up; '$0 down' first"
    mkdir -p "$DIR"/{logs,pids,shared/ray,shared/mlflow-artifacts,tmp}
    chmod 700 "$DIR"
    # Namespaces: a bridge in its own namespace, one namespace per node wired to it by a veth pair.
    ip netns add "$BR"
    ip -n "$BR" link set lo up
    ip -n "$BR" link add br0 type bridge
    ip -n "$BR" link set br0 up
    local n
    for n in "${NODES[@]}"; do
        ip netns add "$(ns "$n")"
        ip -n "$BR" link add "v-$n" type veth peer name eth0 netns "$(ns "$n")"
        ip -n "$BR" link set "v-$n" master br0 up
        ip -n "$(ns "$n")" link set lo up
        ip -n "$(ns "$n")" addr add "$(node_ip "$n")/24" dev eth0
        ip -n "$(ns "$n")" link set eth0 up
    done

    # The cluster token: every node and every driver needs it (RAY_AUTH_TOKEN or a token file).
    "$BIN/python" -c "import secrets; print(secrets.token_hex(32))" > "$DIR/token"
    chmod 600 "$DIR/token"
    cat > "$DIR/env" <<EOF
RAY_AUTH_MODE=token
RAY_AUTH_TOKEN=$(cat "$DIR/token")
RAY_ADDRESS=$HEAD_IP:$GCS_PORT
RAY_API_SERVER_ADDRESS=http://$HEAD_IP:$DASH_PORT
MLFLOW_TRACKING_URI=http://$HEAD_IP:$MLFLOW_PORT
TSEARCH_STORAGE_PATH=$DIR/shared/ray
PATH=$BIN:$PATH
EOF
    chmod 600 "$DIR/env"

    # MLflow tracking server: SQLite backend, artifacts proxied to a shared directory.
    in_ns head "$BIN/mlflow" server --host "$HEAD_IP" --port "$MLFLOW_PORT" --workers 1 \
        --backend-store-uri "sqlite:///$DIR/mlflow.db" \
        --artifacts-destination "$DIR/shared/mlflow-artifacts" \
        > "$DIR/logs/mlflow.log" 2>&1 &
    echo $! > "$DIR/pids/mlflow"

    local common=(--num-cpus="$CPUS" --num-gpus=0 --object-store-memory=200000000
                  --disable-usage-stats --block)
    ( cluster_env; unset RAY_ADDRESS
      exec ip netns exec "$(ns head)" "$BIN/ray" start --head --node-ip-address="$HEAD_IP" \
        --port="$GCS_PORT" --dashboard-host="$HEAD_IP" --dashboard-port="$DASH_PORT" \
        --temp-dir="$DIR/tmp/head" "${common[@]}" ) > "$DIR/logs/head.log" 2>&1 &
    echo $! > "$DIR/pids/head"
    wait_for 60 "the Ray head (from w1, across the bridge)" in_ns w1 bash -c "exec 3<>/dev/tcp/$HEAD_IP/$GCS_PORT"
    for n in w1 w2; do
        ( cluster_env; unset RAY_ADDRESS
          exec ip netns exec "$(ns "$n")" "$BIN/ray" start --address="$HEAD_IP:$GCS_PORT" \
            --node-ip-address="$(node_ip "$n")" --temp-dir="$DIR/tmp/$n" "${common[@]}" \
          ) > "$DIR/logs/$n.log" 2>&1 &
        echo $! > "$DIR/pids/$n"
    done
    wait_for 90 "3 alive Ray nodes" three_alive
    wait_for 60 "the MLflow server" in_ns w1 bash -c "exec 3<>/dev/tcp/$HEAD_IP/$MLFLOW_PORT"
    wait_for 60 "the Ray job server" in_ns w1 bash -c "exec 3<>/dev/tcp/$HEAD_IP/$DASH_PORT"
    cat <<EOF
cluster $NAME is up: Ray head $HEAD_IP:$GCS_PORT (3 nodes), jobs http://$HEAD_IP:$DASH_PORT, MLflow http://$HEAD_IP:$MLFLOW_PORT
  token:   $DIR/token (also in $DIR/env as RAY_AUTH_TOKEN)
  storage: $DIR/shared/ray
run a search on it:
  $0 exec tsearch search experiments/quickstart.yaml
stop it:
  $0 down
EOF
}

stop_ns() {  # SIGTERM, then SIGKILL, every process in a namespace (all of them were started here)
    local space=$1 pids
    pids=$(ip netns pids "$space" 2>/dev/null || true)
    [[ -z $pids ]] && return 0
    kill -TERM $pids 2>/dev/null || true
    for _ in $(seq 20); do
        pids=$(ip netns pids "$space" 2>/dev/null || true)
        [[ -z $pids ]] && return 0
        sleep 0.5
    done
    kill -KILL $pids 2>/dev/null || true
    sleep 0.5
}

down() {
    [[ $(id -u) == 0 ]] || die "run as root"
    local pid f n
    for f in "$DIR"/pids/*; do  # what we started, by PID, first
        [[ -f $f ]] || continue
        pid=$(cat "$f")
        kill -TERM "$pid" 2>/dev/null || true
    done
    for n in "${NODES[@]}"; do
        ip netns list | grep -qw "$(ns "$n")" && stop_ns "$(ns "$n")"
    done
    for n in "${NODES[@]}"; do
        ip netns list | grep -qw "$(ns "$n")" && ip netns del "$(ns "$n")"
    done
    ip netns list | grep -qw "$BR" && ip netns del "$BR"
    rm -rf "$DIR/pids" "$DIR/tmp"
    local left
    left=$(ip netns list | grep -E "^$NAME-(br|head|w1|w2)( |$)" || true)
    [[ -z $left ]] || die "namespaces left behind: $left"
    echo "cluster $NAME is down (results kept in $DIR/shared and $DIR/mlflow.db)"
}

status() {
    ip netns list | grep -qw "$(ns head)" || { echo "cluster $NAME is down"; return 1; }
    echo "Ray nodes alive: $(alive_nodes || echo '?')"
    local n
    for n in "${NODES[@]}"; do
        echo "$(ns "$n") $(node_ip "$n"): $(ip netns pids "$(ns "$n")" | wc -l) processes"
    done
}

kill_node() {
    local n=${1:?which node: w1 or w2}
    [[ $n == head ]] && die "killing the head ends the cluster; kill w1 or w2"
    node_ip "$n" >/dev/null
    local pids
    pids=$(ip netns pids "$(ns "$n")")
    [[ -n $pids ]] && kill -KILL $pids
    echo "killed $(wc -w <<<"$pids") processes of node $n ($(node_ip "$n"))"
}

cmd=${1:-}
shift || true
case $cmd in
    up) up ;;
    down) down ;;
    status) status ;;
    kill-node) kill_node "$@" ;;
    exec)
        [[ $# -gt 0 ]] || die "exec needs a command"
        [[ -f $DIR/env ]] || die "cluster $NAME is not up ($DIR/env missing): run '$0 up'"
        cluster_env
        exec ip netns exec "$(ns head)" "$@" ;;
    *) die "usage: $0 up|down|status|exec CMD...|kill-node w1|w2" ;;
esac
