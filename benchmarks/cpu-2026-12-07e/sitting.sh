#!/usr/bin/env bash
# The #22 sitting of 2026-12-07 (late evening): the build before this session's steps (OLD,
# aa1ffa7) and after them (NEW, af859ae: Winograd on small maps with the 256-tile rule, the
# gather through im2col, the transforms and BatchNorm loops compiled for AVX-512), against
# PyTorch, back to back in each round (benchmarks/sitting-lib.sh).
#   OLD=/tmp/resnet-aa1ffa7 NEW=/tmp/resnet-af859ae PYTHON=/tmp/torchenv/bin/python bash sitting.sh
# and again at the end of the session with NEW = d684bb4 (also the optimizer update at AVX-512
# width) into OUT=benchmarks/cpu-2026-12-07e/sitting-final.jsonl (the README table).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-benchmarks/cpu-2026-12-07e/sitting.jsonl}
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
