#!/usr/bin/env bash
# The #22 sitting of 2026-12-07 (evening): the build before this step (OLD, ee06c59) and the new
# one run two ways - RESNET_CONV=gemm (the weight packed once per call, A panels packed a depth
# step at a time, malloc keeping freed memory) and the default (the same plus Winograd F(2x2,3x3)
# for 3x3 stride-1 layers with outputs of at least 8x8) - against PyTorch. Same protocol as
# benchmarks/run_cpu.sh; the three back to back in each round.
#   OLD=/tmp/resnet-base NEW=/tmp/resnet-new PYTHON=/tmp/torchenv/bin/python bash sitting.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-benchmarks/cpu-2026-12-07c/sitting.jsonl}
THREADS=$(nproc)
: > "$OUT"
one() { # label binary -- args (environment from $ENV)
  local label=$1 bin=$2; shift 3
  env $ENV "$bin" bench "$@" --json 2>/dev/null \
    | sed "s/^{/{\"framework\":\"resnet-cluster (burn 0.21 flex)\",\"variant\":\"$label\",\"round\":$ROUND,/" >> "$OUT"
}
case_() { # depth stem mode batch steps optimizer
  local args=(--depth "$1" --stem "$2" --mode "$3" --batch-size "$4" --warmup 2 --steps "$5" --optimizer "$6")
  echo "== round $ROUND: resnet$1 $2 $3 batch $4 ($6)" >&2
  ENV= one before "$OLD" -- "${args[@]}"
  ENV=RESNET_CONV=gemm one gemm "$NEW" -- "${args[@]}"
  ENV= one default "$NEW" -- "${args[@]}"
  "$PYTHON" benchmarks/pytorch_baseline.py "${args[@]}" --json --threads "$THREADS" \
    | sed "s/^{/{\"round\":$ROUND,/" >> "$OUT"
}
for ROUND in 1 2; do
  case_ 18 cifar train 64 6 sgd
  case_ 18 cifar eval 256 6 sgd
  case_ 18 imagenet train 64 10 adam
  case_ 18 imagenet eval 256 10 sgd
  if [ "$ROUND" = 1 ]; then
    case_ 50 cifar train 64 4 sgd
    case_ 50 cifar eval 256 4 sgd
  fi
done
