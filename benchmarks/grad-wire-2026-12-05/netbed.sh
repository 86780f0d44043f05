#!/usr/bin/env bash
# --grad-wire f32 vs bf16 on the throttled-link test bed (#21 item 2): ResNet-18 CIFAR stem at
# width 64 (the full model, 44.7 MB of f32 gradients), 2 workers, batch 16 each, 8 steps,
# 1 Gbit/s and 200 Mbit/s, the two wires alternating, RUNS runs each. As root, from the
# repository root, binaries built (BIN_DIR, default $CARGO_TARGET_DIR/debug).
set -euo pipefail
RUNS=${RUNS:-2}
OUT=${OUT:-benchmarks/grad-wire-2026-12-05/netbed.jsonl}
: >"$OUT"
for run in $(seq "$RUNS"); do
  for rate in 1gbit 200mbit; do
    for wire in f32 bf16; do
      line=$(BIN_DIR="${BIN_DIR:-${CARGO_TARGET_DIR:-target}/debug}" bash scripts/netbed.sh \
        --rate "$rate" --workers 2 -- --dataset synthetic --width 64 --batch-size 16 \
        --train-limit 256 --test-limit 32 --epochs 1 --seed 3 --grad-wire "$wire")
      echo "{\"wire\": \"$wire\", \"run\": $run, ${line#\{}" | tee -a "$OUT"
    done
  done
done
