#!/usr/bin/env bash
# The trainer split touches `resnet train`'s loop, which `resnet bench` does not run: the same
# short training run (ResNet-18 CIFAR stem, width 64, batch 64, 10 steps of synthetic data, seed
# 1) with the binary from before (4c910e6) and after, alternating, ROUNDS rounds. Prints one
# line per run: binary, round, the epoch's images/s (the trainer's own clock, data loading,
# step, metrics files), the loss and the final parameter hash (bit-identity).
#   OLD=... NEW=... ROUNDS=3 bash train_ab.sh
set -euo pipefail
ROUNDS=${ROUNDS:-3}
tmp=$(mktemp -d)
for round in $(seq "$ROUNDS"); do
  for which in before after; do
    bin=$([[ $which == before ]] && echo "$OLD" || echo "$NEW")
    rm -rf "$tmp/run"
    "$bin" train --dataset synthetic --width 64 --batch-size 64 --train-limit 640 --test-limit 64 \
      --epochs 1 --seed 1 --out "$tmp/run" --json 2>/dev/null >"$tmp/out.json"
    python3 - "$which" "$round" "$tmp/out.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[3]))
h = d["history"][0]
print(json.dumps({"binary": sys.argv[1], "round": int(sys.argv[2]),
                  "images_per_sec": round(h["images_per_sec"], 2),
                  "train_loss": h["train_loss"],
                  "param_hash": d["param_hash"]}))
PY
  done
done
rm -rf "$tmp"
