#!/usr/bin/env bash
# End to end: a 2-node Ray cluster on this machine (`ray start --head` plus a
# second `ray start`), then `ray job submit --working-dir .` of the quickstart
# recipe. Loopback only. Leaves no Ray process behind.
#
#   bash tests/workflows/ray_job_submit.sh OUT_DIR
#
# The cluster lives in a temp dir of its own, and only its processes are
# stopped at the end (`ray stop` would end every Ray process on the machine).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
OUT="${1:?usage: ray_job_submit.sh OUT_DIR}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
VENV_BIN="$(dirname "$(command -v python)")"
export PATH="$VENV_BIN:$PATH" RAY_AUTH_MODE=token RAY_USAGE_STATS_ENABLED=0
PORT=$((20000 + RANDOM % 10000))
DASH=$((PORT + 1))
# Short: Ray puts unix sockets under it (their paths are limited to 107 bytes).
TMP="/tmp/gtj-$PORT"

stop_cluster() {
    local status=0
    bash "$ROOT/tests/workflows/stop_ray_tree.sh" "$TMP" "$PORT" || status=$?
    rm -rf "$TMP"
    return $status
}
trap stop_cluster EXIT
t0=$(date +%s)

echo "== head on 127.0.0.1:$PORT, dashboard :$DASH"
ray start --head --node-ip-address=127.0.0.1 --port="$PORT" --dashboard-host=127.0.0.1 \
    --dashboard-port="$DASH" --num-cpus=1 --disable-usage-stats --temp-dir="$TMP" >"$OUT/head.log" 2>&1
echo "== second node"
ray start --address="127.0.0.1:$PORT" --node-ip-address=127.0.0.1 --num-cpus=1 --temp-dir="$TMP" >"$OUT/node.log" 2>&1
ray status --address="127.0.0.1:$PORT" | grep -E "node_|CPU" || true

echo "== ray job submit"
cd "$ROOT"
# One worker per node (STRICT_SPREAD): the job really spans both nodes.
ray job submit --address "http://127.0.0.1:$DASH" --working-dir . -- \
    python recipes/quickstart.py --smoke "run.output_dir=$OUT/runs" run.name=job-smoke \
    scaling.placement_strategy=STRICT_SPREAD scaling.num_workers=2 | tee "$OUT/job.log"

echo "== outputs"
test -f "$OUT/runs/job-smoke/config.yaml"
ls "$OUT"/runs/job-smoke/checkpoints/step=*.pt
test -f "$OUT/runs/job-smoke/metrics.csv"
grep -q "run job-smoke finished" "$OUT/job.log"
# Each worker line arrives once per node here: the two nodes share one host and one logs
# directory, and each node's log monitor forwards every worker log file in it. On separate
# machines (or one node) it arrives once.
trap - EXIT
stop_cluster  # fails if any process of the cluster (agents included) outlives it
echo "ray job submit workflow passed in $(( $(date +%s) - t0 ))s"
