#!/usr/bin/env bash
# The #22 sitting of 2026-12-07 (night): the build before this step (OLD, b43d828: Winograd for
# the forward pass and the input gradient) and the new one (NEW: the weight gradient of the 3x3
# stride-1 layers with >= 32 input channels as Winograd too), against PyTorch, back to back in
# each round (benchmarks/sitting-lib.sh).
#   OLD=/tmp/resnet-b43d828 NEW=/tmp/resnet-new PYTHON=/tmp/torchenv/bin/python bash sitting.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-benchmarks/cpu-2026-12-07d/sitting.jsonl}
: > "$OUT"
. benchmarks/sitting-lib.sh
VARIANTS=("before=$OLD" "default=$NEW")
for ROUND in 1 2; do
  sitting_case 18 cifar train 64 6 sgd
  sitting_case 18 cifar eval 256 6 sgd
  sitting_case 18 imagenet train 64 10 adam
  sitting_case 18 imagenet eval 256 10 sgd
  sitting_case 50 cifar train 64 4 sgd
  if [ "$ROUND" = 1 ]; then
    sitting_case 50 cifar eval 256 4 sgd
  fi
done
