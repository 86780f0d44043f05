#!/usr/bin/env bash
# The #22/#18-item-4 sitting of 2026-12-07: the fused optimizer update against Burn's optimizer
# (RESNET_OPTIM=burn), same binary, and PyTorch, on the ResNet-18 training rows (evaluation runs
# no optimizer). Three rounds, the variants back to back in each. Same protocol as
# benchmarks/run_cpu.sh. JSON lines to $OUT.
#   RESNET=$CARGO_TARGET_DIR/debug/resnet PYTHON=/tmp/torchenv/bin/python bash sitting.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-benchmarks/cpu-2026-12-07/sitting.jsonl}
RESNET=${RESNET:-${CARGO_TARGET_DIR:-target}/debug/resnet}
THREADS=$(nproc)
: > "$OUT"
one() { # label env... -- args
  local label=$1; shift
  local envs=()
  while [ "$1" != "--" ]; do envs+=("$1"); shift; done
  shift
  env "${envs[@]}" "$RESNET" bench "$@" --json 2>/dev/null \
    | sed "s/^{/{\"framework\":\"resnet-cluster (burn 0.21 flex)\",\"variant\":\"$label\",\"round\":$ROUND,/" >> "$OUT"
}
case_() { # depth stem mode batch steps optimizer
  local args=(--depth "$1" --stem "$2" --mode "$3" --batch-size "$4" --warmup 2 --steps "$5" --optimizer "$6")
  echo "== round $ROUND: resnet$1 $2 $3 batch $4 ($6)" >&2
  one burn-optim RESNET_OPTIM=burn -- "${args[@]}"
  one default RESNET_OPTIM=fused -- "${args[@]}"
  "$PYTHON" benchmarks/pytorch_baseline.py "${args[@]}" --json --threads "$THREADS" \
    | sed "s/^{/{\"round\":$ROUND,/" >> "$OUT"
}
for ROUND in 1 2 3; do
  case_ 18 imagenet train 64 10 adam
  case_ 18 imagenet train 64 10 sgd
  case_ 18 cifar train 64 6 sgd
done
