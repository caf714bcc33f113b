#!/bin/sh
# Entry point of the Ray node containers:
#   ray-node.sh head     start the head node in the foreground (`ray start --head --block`)
#   ray-node.sh worker   start a worker node that joins $RAY_HEAD_ADDRESS, in the foreground
#   ray-node.sh health   the containers' health check: exit 0 when the cluster's head (GCS) answers
# Configured by environment variables, documented in docker/README.md. tests/test_cluster.py starts
# its 2-node cluster with this script and runs the health check against it.
set -eu

role="${1:-worker}"
case "$role" in
  head)
    # The head holds the cluster's state and the job server (the API submits runners there).
    # No CPUs by default: proxy trials go to the workers, the runner (a Ray job) needs none.
    set -- ray start --head --block \
      --port="${RAY_PORT:-6379}" \
      --dashboard-host="${RAY_DASHBOARD_HOST:-0.0.0.0}" \
      --dashboard-port="${RAY_DASHBOARD_PORT:-8265}" \
      --num-cpus="${RAY_NUM_CPUS:-0}" \
      --num-gpus="${RAY_NUM_GPUS:-0}"
    ;;
  worker)
    # CPUs and GPUs are detected unless given; Ray Tune gives each proxy trial the
    # resources.cpus_per_trial / gpus_per_trial of the search config, one GPU set per trial.
    set -- ray start --block --address="${RAY_HEAD_ADDRESS:-ray-head:6379}"
    if [ -n "${RAY_NUM_CPUS:-}" ]; then set -- "$@" --num-cpus="$RAY_NUM_CPUS"; fi
    if [ -n "${RAY_NUM_GPUS:-}" ]; then set -- "$@" --num-gpus="$RAY_NUM_GPUS"; fi
    ;;
  health)
    # A worker asks the head it joined; the head (no RAY_HEAD_ADDRESS) asks itself.
    exec ray health-check --address="${RAY_HEAD_ADDRESS:-127.0.0.1:${RAY_PORT:-6379}}"
    ;;
  *)
    echo "usage: ray-node.sh head|worker|health (got '$role')" >&2
    exit 2
    ;;
esac
if [ -n "${RAY_NODE_IP:-}" ]; then set -- "$@" --node-ip-address="$RAY_NODE_IP"; fi
if [ -n "${RAY_OBJECT_STORE_MEMORY:-}" ]; then set -- "$@" --object-store-memory="$RAY_OBJECT_STORE_MEMORY"; fi
# Any other `ray start` options, split at spaces, e.g. fixed ports for firewalls:
# RAY_START_ARGS="--node-manager-port=6380 --object-manager-port=6381 --min-worker-port=10002 --max-worker-port=10100"
# shellcheck disable=SC2086
exec "$@" ${RAY_START_ARGS:-}
