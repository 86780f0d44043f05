#!/usr/bin/env bash
# A throttled-link test bed on one machine: the coordinator and each worker run in their own
# network namespace, joined by veth pairs through a bridge in a "switch" namespace, every link
# rate-limited with `tbf` in both directions. Traffic stays inside the namespaces this script
# creates; they (and every process in them) are removed on exit, whatever happens.
#
#   sudo scripts/netbed.sh [--rate 1gbit|off] [--workers 2] [--out DIR] [--bin DIR] [--fail-worker]
#                          -- RUN ARGS...
#
# RUN ARGS go to the coordinator (the run configuration: --dataset, --depth, --epochs, ...).
# Prints one JSON line: width and batch size (when RUN ARGS name them), rate, workers, steps,
# wall seconds, images/s per epoch (the coordinator's summary; `resnet scaling --calibrate`
# reads these lines) and whether the replicas ended identical; exits non-zero when the run failed. --fail-worker starts the last worker with a
# bad flag (CI uses it to prove the clean-up after a failure). Needs root, iproute2 and tc.
set -euo pipefail

RATE=1gbit
WORKERS=2
OUT=
BIN=${BIN_DIR:-${CARGO_TARGET_DIR:-target}/debug}
FAIL_WORKER=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --rate) RATE=$2; shift 2 ;;
    --workers) WORKERS=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --bin) BIN=$2; shift 2 ;;
    --fail-worker) FAIL_WORKER=1; shift ;;
    --) shift; break ;;
    *) echo "netbed.sh: unknown argument '$1' (see the header of $0)" >&2; exit 2 ;;
  esac
done
RUN_ARGS=("$@")
for tool in ip tc; do
  command -v "$tool" >/dev/null || { echo "netbed.sh: '$tool' not found (iproute2)" >&2; exit 2; }
done
[[ $(id -u) == 0 ]] || { echo "netbed.sh: needs root (network namespaces)" >&2; exit 2; }
for b in coordinator worker; do
  [[ -x "$BIN/$b" ]] || { echo "netbed.sh: $BIN/$b not built (cargo build, or --bin DIR)" >&2; exit 2; }
done
[[ "$WORKERS" =~ ^[1-9][0-9]?$ ]] || { echo "netbed.sh: --workers $WORKERS: expected 1-99" >&2; exit 2; }

# Names unique to this bed (interface names have at most 15 characters).
P="nb$$"
NODES=(c $(seq -f 'w%g' 0 $((WORKERS - 1))))
OUT=${OUT:-$(mktemp -d /tmp/netbed.XXXXXX)}
mkdir -p "$OUT"
PIDS=()

cleanup() {
  local rc=$?
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for ns in $(ip netns list | awk '{print $1}' | grep "^$P-" || true); do
    # Anything still running inside (a worker's children) goes with its namespace.
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done
  exit "$rc"
}
trap cleanup EXIT INT TERM

# tbf needs a bucket of at least one timer tick of traffic; 1 ms of the rate, at least 64 KiB.
burst() {
  python3 -c "
import re,sys
m=re.fullmatch(r'(\d+(?:\.\d+)?)([kmg]?)bit', sys.argv[1].lower())
if not m: sys.exit('netbed.sh: --rate %s: expected e.g. 100mbit, 1gbit, 10gbit' % sys.argv[1])
bits=float(m[1])*{'':1,'k':1e3,'m':1e6,'g':1e9}[m[2]]
print(max(65536, int(bits/8/1000)))" "$1"
}
if [[ $RATE != off ]]; then BURST=$(burst "$RATE"); fi

ip netns add "$P-sw"
ip -n "$P-sw" link add br0 type bridge
ip -n "$P-sw" link set br0 up
ip -n "$P-sw" link set lo up
i=1
for node in "${NODES[@]}"; do
  ns="$P-$node"
  ip netns add "$ns"
  ip link add "$P$node" type veth peer name "$P${node}s"
  ip link set "$P$node" netns "$ns"
  ip link set "$P${node}s" netns "$P-sw"
  ip -n "$ns" link set "$P$node" name eth0
  ip -n "$ns" addr add "10.77.0.$i/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" link set lo up
  ip -n "$P-sw" link set "$P${node}s" master br0 up
  # Both directions of the link: the node's uplink and the switch port's downlink.
  if [[ $RATE != off ]]; then
    tc -n "$ns" qdisc add dev eth0 root tbf rate "$RATE" burst "$BURST" latency 100ms
    tc -n "$P-sw" qdisc add dev "$P${node}s" root tbf rate "$RATE" burst "$BURST" latency 100ms
  fi
  i=$((i + 1))
done

COORD=10.77.0.1:50051
START=$(date +%s.%N)
ip netns exec "$P-c" "$BIN/coordinator" --workers "$WORKERS" --listen "$COORD" --json \
  "${RUN_ARGS[@]}" >"$OUT/coordinator.json" 2>"$OUT/coordinator.log" &
PIDS+=($!)
for w in $(seq 0 $((WORKERS - 1))); do
  extra=()
  if [[ $FAIL_WORKER == 1 && $w == $((WORKERS - 1)) ]]; then extra=(--no-such-flag); fi
  ip netns exec "$P-w$w" "$BIN/worker" --coordinator "$COORD" --connect-timeout 30 \
    --listen "10.77.0.$((w + 2)):7070" --worker-id "w$w" --json "${extra[@]}" \
    >"$OUT/worker-$w.json" 2>"$OUT/worker-$w.log" &
  PIDS+=($!)
done
# The first process to fail ends the bed: the others would only wait out their timeouts.
failed=0
for _ in "${PIDS[@]}"; do
  if ! wait -n; then
    failed=1
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait || true
    break
  fi
done
WALL=$(python3 -c "import sys; print(round(float(sys.argv[2]) - float(sys.argv[1]), 2))" "$START" "$(date +%s.%N)")
python3 - "$OUT" "$RATE" "$WORKERS" "$failed" "$WALL" "${RUN_ARGS[@]}" <<'EOF'
import json, sys
out, rate, workers, failed, wall = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1", float(sys.argv[5])
# The model width and per-worker batch of the run, for `resnet scaling --calibrate`.
run = sys.argv[6:]
def flag(name):
    for i, a in enumerate(run):
        if a == name and i + 1 < len(run):
            return run[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None
shape = {k: int(v) for k, v in (("width", flag("--width")), ("batch_size", flag("--batch-size")))
         if v is not None and v.isdigit()}
try:
    s = json.load(open(f"{out}/coordinator.json"))
except (OSError, ValueError):
    s = {}
print(json.dumps({
    **shape, "rate": rate, "workers": workers, "ok": not failed and bool(s),
    "steps": s.get("steps"), "replicas_identical": s.get("replicas_identical"),
    "wall_seconds": wall,
    "images_per_sec": [round(e["images_per_sec"], 1) for e in s.get("epochs", [])],
    "out": out,
}))
EOF
if [[ $failed == 1 ]]; then
  echo "netbed.sh: the run failed; logs in $OUT" >&2
  exit 1
fi
