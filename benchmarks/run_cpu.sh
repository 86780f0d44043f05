#!/usr/bin/env bash
# One sitting of CPU benchmarks: `resnet bench` and the PyTorch baseline on the same cases,
# back to back, same thread count. Ours runs in variants of the same binary, so each CPU
# optimisation's effect is measured in the same sitting:
#   burn        RESNET_CONV=burn RESNET_BN=burn   Burn's flex convolution and generic BatchNorm
#   gemm-conv   RESNET_BN=burn                    + the model's im2col/GEMM convolution
#   all-taps-unfolded  RESNET_CONV=gemm-all-taps RESNET_BN=unfolded
#                                                 + fused BatchNorm/ReLU (the default until 2026-12-06)
#   all-taps    RESNET_CONV=gemm-all-taps         + BatchNorm folded into the convolution in eval
#   burn-optim  RESNET_OPTIM=burn                 + taps that read only padding skipped (2026-12-06)
#   no-winograd RESNET_CONV=gemm                  + the fused optimizer update
#   default                                       + Winograd F(2x2,3x3) for 3x3 stride-1 layers
#                                                   with outputs >= 8x8 (2026-12-07; what users get)
# Every variant before `no-winograd` runs Burn's optimizer (RESNET_OPTIM=burn), as they were measured.
# Writes JSON lines to $OUT (default benchmarks/cpu-results.jsonl).
#   bash benchmarks/run_cpu.sh            # needs a built `resnet` (cargo build) and torch
#   VARIANTS=default CASES=r18 bash benchmarks/run_cpu.sh   # just the default build, ResNet-18
set -euo pipefail
cd "$(dirname "$0")/.."
RESNET=${RESNET:-${CARGO_TARGET_DIR:-target}/debug/resnet}
OUT=${OUT:-benchmarks/cpu-results.jsonl}
VARIANTS=${VARIANTS:-"burn gemm-conv default"}
CASES=${CASES:-"r18 r50"}
THREADS=$(nproc)
: > "$OUT"
variant_env() {
  case "$1" in
    burn) echo "RESNET_CONV=burn RESNET_BN=burn RESNET_OPTIM=burn" ;;
    gemm-conv) echo "RESNET_CONV=gemm RESNET_BN=burn RESNET_OPTIM=burn" ;;
    all-taps-unfolded) echo "RESNET_CONV=gemm-all-taps RESNET_BN=unfolded RESNET_OPTIM=burn" ;;
    all-taps) echo "RESNET_CONV=gemm-all-taps RESNET_BN=fused RESNET_OPTIM=burn" ;;
    burn-optim) echo "RESNET_CONV=gemm RESNET_BN=fused RESNET_OPTIM=burn" ;;
    no-winograd) echo "RESNET_CONV=gemm RESNET_BN=fused RESNET_OPTIM=fused" ;;
    default) echo "RESNET_CONV=winograd RESNET_BN=fused RESNET_OPTIM=fused" ;;
    *) echo "unknown variant $1" >&2; exit 2 ;;
  esac
}
run() { # depth stem mode batch steps optimizer
  local common=(--depth "$1" --stem "$2" --mode "$3" --batch-size "$4" --warmup 2 --steps "$5" --optimizer "$6" --json)
  for v in $VARIANTS; do
    echo "== resnet$1 $2 $3 batch $4 ($6): resnet-cluster $v" >&2
    env $(variant_env "$v") "$RESNET" bench "${common[@]}" \
      | sed "s/^{/{\"framework\":\"resnet-cluster (burn 0.21 flex)\",\"variant\":\"$v\",/" | tee -a "$OUT"
  done
  echo "== resnet$1 $2 $3 batch $4 ($6): PyTorch" >&2
  ${PYTHON:-python3} benchmarks/pytorch_baseline.py "${common[@]}" --threads "$THREADS" | tee -a "$OUT"
}
for c in $CASES; do
  case "$c" in
    r18)
      run 18 cifar train 64 6 sgd
      run 18 cifar eval 256 6 sgd
      run 18 imagenet train 64 10 adam
      run 18 imagenet eval 256 10 sgd
      ;;
    r50)
      run 50 cifar train 64 4 sgd
      run 50 cifar eval 256 4 sgd
      ;;
    *) echo "unknown case $c (r18, r50)" >&2; exit 2 ;;
  esac
done
