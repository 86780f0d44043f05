#!/usr/bin/env bash
# Before/after of the trainer split (#19 item 2, commit e184796) and what followed on the step
# path: `resnet bench` of the binary from 4c910e6 (before) and of the current one (after),
# alternating per case, ROUNDS rounds, the four ResNet-18 rows of benchmarks/run_cpu.sh.
#   OLD=/path/resnet-old NEW=/path/resnet-new ROUNDS=2 bash ab.sh > ab.jsonl
set -euo pipefail
ROUNDS=${ROUNDS:-2}
for round in $(seq "$ROUNDS"); do
  for c in "cifar train 64 sgd" "cifar eval 256 sgd" "imagenet train 64 adam" "imagenet eval 256 sgd"; do
    set -- $c
    for which in before after; do
      bin=$([[ $which == before ]] && echo "$OLD" || echo "$NEW")
      "$bin" bench --depth 18 --stem "$1" --mode "$2" --batch-size "$3" --optimizer "$4" \
        --warmup 1 --steps 4 --json | sed "s/^{/{\"binary\":\"$which\",\"round\":$round,/"
    done
  done
done
