#!/usr/bin/env bash
# Proves the monitoring config against the real tools: promtool checks the scrape config and
# rules, a real Prometheus scrapes a real cluster run (a coordinator and two worker processes,
# with a cluster token), and every PromQL expression of the Grafana dashboard and of the rules
# must return series (deploy/verify/check_queries.py).
#
#   BIN_DIR=target/debug deploy/verify/observability.sh
#
# Needs: prometheus and promtool (Debian: apt-get install prometheus), python3, the built
# `coordinator` and `worker` binaries in $BIN_DIR. Uses ports 9090 (Prometheus), 9187-9189
# (metrics, as in deploy/prometheus/prometheus.yml) and 50551 (gRPC) on 127.0.0.1.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN_DIR=${BIN_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/debug}
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
for tool in prometheus promtool python3 curl; do
  command -v "$tool" >/dev/null || { echo "observability.sh: '$tool' not found" >&2; exit 2; }
done
for b in coordinator worker; do
  [ -x "$BIN_DIR/$b" ] || { echo "observability.sh: no $BIN_DIR/$b (cargo build -p resnet-cli --bins)" >&2; exit 2; }
done

echo "== promtool"
promtool check config "$ROOT/deploy/prometheus/prometheus.yml"
promtool check rules "$ROOT/deploy/prometheus/rules.yml"

echo "== prometheus"
cp "$ROOT/deploy/prometheus/prometheus.yml" "$ROOT/deploy/prometheus/rules.yml" "$WORK/"
prometheus --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/tsdb" \
  --web.listen-address=127.0.0.1:9090 --log.level=warn >"$WORK/prometheus.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 60); do curl -sf http://127.0.0.1:9090/-/ready >/dev/null && break; sleep 0.5; done
curl -sf http://127.0.0.1:9090/-/ready >/dev/null || { cat "$WORK/prometheus.log"; exit 1; }

echo "== cluster run: coordinator + 2 worker processes, metrics on 9187-9189"
head -c 24 /dev/urandom | base64 >"$WORK/token"
export RESNET_CLUSTER_TOKEN_FILE="$WORK/token"
"$BIN_DIR/coordinator" --workers 2 --listen 127.0.0.1:50551 --metrics-addr 127.0.0.1:9187 \
  --metrics-linger 5 --dataset synthetic --width 8 --batch-size 32 --train-limit 1024 \
  --test-limit 256 --epochs 12 --lr 0.05 --checkpoint-steps 8 --out "$WORK/run" \
  >"$WORK/coordinator.log" 2>&1 &
COORD=$!
PIDS+=($COORD)
WORKERS=()
for i in 0 1; do
  "$BIN_DIR/worker" --coordinator http://127.0.0.1:50551 --worker-id "w$i" \
    --metrics-addr "127.0.0.1:918$((8 + i))" --out "$WORK/w$i" >"$WORK/worker$i.log" 2>&1 &
  WORKERS+=($!)
  PIDS+=($!)
done

# Wait for the first epoch's evaluation, then check while the run is still going.
for _ in $(seq 120); do
  grep -q 'resnet_cluster_run_epochs_completed [1-9]' <(curl -s http://127.0.0.1:9187/metrics) && break
  kill -0 "$COORD" 2>/dev/null || break
  sleep 1
done
echo "== queries"
status=0
python3 "$ROOT/deploy/verify/check_queries.py" http://127.0.0.1:9090 \
  "$ROOT/deploy/grafana/training-overview.json" --deadline 90 || status=$?

wait "$COORD" || { echo "coordinator failed:"; tail -20 "$WORK/coordinator.log"; status=1; }
for w in "${WORKERS[@]}"; do wait "$w" || status=1; done
if [ "$status" -ne 0 ]; then
  tail -5 "$WORK"/*.log
fi
exit "$status"
