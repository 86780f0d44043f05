#!/usr/bin/env bash
# --grad-wire f32 vs bf16 on real CIFAR-10 (#21 item 2): 2 data-parallel workers in one process
# (`coordinator --local`, the in-memory ring rounds exactly as the TCP ring's 2-byte frames do),
# ResNet-18 CIFAR stem at width 16, batch 64 per worker, the first 16,000 training images,
# all 10,000 test images, SGD lr 0.1 cosine, 4 epochs, two seeds per wire.
#   COORDINATOR=path/to/coordinator DATA=../shared/data/cifar-10-batches-bin OUT=/tmp/gw ./accuracy.sh
set -u
COORDINATOR=${COORDINATOR:-${CARGO_TARGET_DIR:-target}/debug/coordinator}
DATA=${DATA:-../shared/data/cifar-10-batches-bin}
OUT=${OUT:-/tmp/grad-wire}
mkdir -p "$OUT"
for seed in 1 2; do for wire in f32 bf16; do
  d=$OUT/s$seed-$wire; rm -rf "$d"
  /usr/bin/time -f "%e s wall" "$COORDINATOR" --local --workers 2 --dataset cifar10 --data "$DATA" \
    --width 16 --batch-size 64 --epochs 4 --train-limit 16000 --lr 0.1 --schedule cosine \
    --seed "$seed" --grad-wire "$wire" --out "$d" --json >"$d.json" 2>"$d.log"
  echo "$seed $wire rc=$? $(tail -1 "$d.log")" >>"$OUT/done.txt"
done; done
