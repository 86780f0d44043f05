#!/usr/bin/env bash
# The #22 sitting of 2026-12-06: the four ResNet-18 rows, two rounds, each round running back to
# back the binary before the dependency-profile change (OLD, commit 1eb1d61) with the old paths
# (every tap, BatchNorm unfolded in evaluation) and with its defaults, the binary after it (NEW),
# and PyTorch. Same protocol as benchmarks/run_cpu.sh. JSON lines to $OUT.
#   OLD=/tmp/resnet-1eb1d61 NEW=$CARGO_TARGET_DIR/debug/resnet PYTHON=python3 bash sitting.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-benchmarks/cpu-2026-12-06/sitting.jsonl}
THREADS=$(nproc)
: > "$OUT"
one() { # label binary env... -- args
  local label=$1 bin=$2; shift 2
  local envs=()
  while [ "$1" != "--" ]; do envs+=("$1"); shift; done
  shift
  env "${envs[@]}" "$bin" bench "$@" --json 2>/dev/null \
    | sed "s/^{/{\"framework\":\"resnet-cluster (burn 0.21 flex)\",\"variant\":\"$label\",\"round\":$ROUND,/" >> "$OUT"
}
case_() { # depth stem mode batch steps optimizer
  local args=(--depth "$1" --stem "$2" --mode "$3" --batch-size "$4" --warmup 2 --steps "$5" --optimizer "$6")
  echo "== round $ROUND: resnet$1 $2 $3 batch $4 ($6)" >&2
  one before "$OLD" RESNET_CONV=gemm-all-taps RESNET_BN=unfolded -- "${args[@]}"
  one taps-folded "$OLD" RESNET_CONV=gemm RESNET_BN=fused -- "${args[@]}"
  one default "$NEW" RESNET_CONV=gemm RESNET_BN=fused -- "${args[@]}"
  "$PYTHON" benchmarks/pytorch_baseline.py "${args[@]}" --json --threads "$THREADS" \
    | sed "s/^{/{\"round\":$ROUND,/" >> "$OUT"
}
for ROUND in 1 2; do
  case_ 18 cifar train 64 6 sgd
  case_ 18 cifar eval 256 6 sgd
  case_ 18 imagenet train 64 10 adam
  case_ 18 imagenet eval 256 10 sgd
done
