#!/usr/bin/env bash
# One sitting of CPU benchmarks: `resnet bench` and the PyTorch baseline on the same cases,
# back to back, same thread count. Writes JSON lines to $OUT (default benchmarks/cpu-results.jsonl).
#   bash benchmarks/run_cpu.sh            # needs a built `resnet` (cargo build) and torch
set -euo pipefail
cd "$(dirname "$0")/.."
RESNET=${RESNET:-${CARGO_TARGET_DIR:-target}/debug/resnet}
OUT=${OUT:-benchmarks/cpu-results.jsonl}
THREADS=$(nproc)
: > "$OUT"
run() { # depth stem mode batch steps
  local common=(--depth "$1" --stem "$2" --mode "$3" --batch-size "$4" --warmup 2 --steps "$5" --json)
  echo "== resnet$1 $2 $3 batch $4" >&2
  "$RESNET" bench "${common[@]}" | sed 's/^{/{"framework":"resnet-cluster (burn 0.21 flex)",/' | tee -a "$OUT"
  python3 benchmarks/pytorch_baseline.py "${common[@]}" --threads "$THREADS" | tee -a "$OUT"
}
run 18 cifar train 64 6
run 18 cifar eval 256 6
run 18 imagenet train 64 10
run 18 imagenet eval 256 10
run 50 cifar train 64 4
run 50 cifar eval 256 4
