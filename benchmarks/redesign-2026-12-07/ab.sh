#!/usr/bin/env bash
# #19's last steps (the Burn-free resnet-spec crate b17b35a, the worker split 2d4c077 and the
# file layering ee06c59) move code only. Before: 6b714b9 with the build profile of ee3ec03
# cherry-picked (so both binaries build dependencies alike); after: ee06c59. Each round runs, old
# binary then new: a short `resnet train` (ResNet-18 CIFAR stem, width 64, batch 64, 10 steps of
# synthetic data), a `coordinator --local --workers 2` run of the same, and `resnet bench` over
# the four ResNet-18 rows. One JSON line per run: which, round, case, images/s, parameter hash.
#   OLD_DIR=/tmp/ab-old NEW_DIR=/tmp/ab-new ROUNDS=2 bash ab.sh > ab.jsonl
# (*_DIR holds that build's `resnet` and `coordinator`.)
set -euo pipefail
ROUNDS=${ROUNDS:-2}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
RUN=(--dataset synthetic --width 64 --batch-size 64 --train-limit 640 --test-limit 64 --epochs 1 --seed 1)
line() { # which round case json-file
  python3 - "$@" <<'PY'
import json, sys
which, rnd, case, path = sys.argv[1:5]
d = json.load(open(path))
if "param_hashes" in d:  # coordinator summary
    assert d["replicas_identical"], path
    h, ips = d["param_hashes"][0], d["epochs"][-1]["images_per_sec"]
elif "param_hash" in d:  # resnet train
    h, ips = d["param_hash"], d["history"][0]["images_per_sec"]
else:  # resnet bench
    h, ips = None, d["images_per_sec"]
print(json.dumps({"binary": which, "round": int(rnd), "case": case,
                  "images_per_sec": round(ips, 2), "param_hash": h}))
PY
}
for round in $(seq "$ROUNDS"); do
  for which in before after; do
    dir=$([[ $which == before ]] && echo "$OLD_DIR" || echo "$NEW_DIR")
    rm -rf "$tmp/run"
    "$dir/resnet" train "${RUN[@]}" --out "$tmp/run" --json 2>/dev/null >"$tmp/out.json"
    line "$which" "$round" train "$tmp/out.json"
    rm -rf "$tmp/cl"
    "$dir/coordinator" --local --workers 2 "${RUN[@]}" --out "$tmp/cl" --json 2>/dev/null >"$tmp/out.json"
    line "$which" "$round" local-2 "$tmp/out.json"
    for c in "cifar train 64 sgd" "cifar eval 256 sgd" "imagenet train 64 adam" "imagenet eval 256 sgd"; do
      set -- $c
      "$dir/resnet" bench --depth 18 --stem "$1" --mode "$2" --batch-size "$3" --optimizer "$4" \
        --warmup 2 --steps 6 --json 2>/dev/null >"$tmp/out.json"
      line "$which" "$round" "bench-$1-$2" "$tmp/out.json"
    done
  done
done
