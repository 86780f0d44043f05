#!/usr/bin/env bash
# The #22 sitting of 2026-12-07 (night): the build before this step (OLD, b43d828: Winograd for
# the forward pass and the input gradient) and the new one (NEW: the weight gradient of the 3x3
# stride-1 layers with >= 32 input channels as Winograd too), against PyTorch. Same protocol as
# benchmarks/run_cpu.sh; the three back to back in each round.
#   OLD=/tmp/resnet-b43d828 NEW=/tmp/resnet-new PYTHON=/tmp/torchenv/bin/python bash sitting.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-benchmarks/cpu-2026-12-07d/sitting.jsonl}
THREADS=$(nproc)
: > "$OUT"
one() { # label binary -- args
  local label=$1 bin=$2; shift 3
  "$bin" bench "$@" --json 2>/dev/null \
    | sed "s/^{/{\"framework\":\"resnet-cluster (burn 0.21 flex)\",\"variant\":\"$label\",\"round\":$ROUND,/" >> "$OUT"
}
case_() { # depth stem mode batch steps optimizer
  local args=(--depth "$1" --stem "$2" --mode "$3" --batch-size "$4" --warmup 2 --steps "$5" --optimizer "$6")
  echo "== round $ROUND: resnet$1 $2 $3 batch $4 ($6)" >&2
  one before "$OLD" -- "${args[@]}"
  one default "$NEW" -- "${args[@]}"
  "$PYTHON" benchmarks/pytorch_baseline.py "${args[@]}" --json --threads "$THREADS" \
    | sed "s/^{/{\"round\":$ROUND,/" >> "$OUT"
}
for ROUND in 1 2; do
  case_ 18 cifar train 64 6 sgd
  case_ 18 cifar eval 256 6 sgd
  case_ 18 imagenet train 64 10 adam
  case_ 18 imagenet eval 256 10 sgd
  case_ 50 cifar train 64 4 sgd
  if [ "$ROUND" = 1 ]; then
    case_ 50 cifar eval 256 4 sgd
  fi
done
