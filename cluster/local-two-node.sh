#!/usr/bin/env bash
# Two Ray nodes on this machine with token authentication ON, to try the cluster path without a cloud:
#
#   bash cluster/local-two-node.sh start
#   RAY_AUTH_MODE=token .venv/bin/ray job submit --address http://127.0.0.1:8265 -- \
#       .venv/bin/python -m rayif demo --workers 2
#   bash cluster/local-two-node.sh stop      # stops only these two nodes' processes
#
# Every node and every client needs RAY_AUTH_MODE=token and the same token; on one machine they all read
# ~/.ray/auth_token, generated here if missing.
set -euo pipefail
RAY="${RAY:-$(dirname "$0")/../.venv/bin/ray}"
TMP=/tmp/rayif-2node
export RAY_AUTH_MODE=token
case "${1:-}" in
  start)
    [ -s ~/.ray/auth_token ] || "$RAY" get-auth-token --generate >/dev/null
    # each node's job agent needs its own port; both default to 52365
    "$RAY" start --head --port=6390 --node-ip-address=127.0.0.1 --num-cpus=1 --dashboard-host=127.0.0.1 \
      --dashboard-port=8265 --dashboard-agent-listen-port=52366 --temp-dir="$TMP" --disable-usage-stats
    "$RAY" start --address=127.0.0.1:6390 --node-ip-address=127.0.0.1 --num-cpus=1 \
      --dashboard-agent-listen-port=52367 --disable-usage-stats
    ;;
  stop)
    for sig in TERM KILL; do  # Ray's gcs_server and raylet can outlive a TERM
      pkill "-$sig" -f -- "$TMP" || true
      pkill "-$sig" -f -- "127.0.0.1:6390" || true
      sleep 3
    done
    ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
