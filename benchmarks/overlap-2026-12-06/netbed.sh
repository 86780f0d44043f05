#!/usr/bin/env bash
# --overlap on vs off on the throttled-link test bed (#21 item 1): ResNet-18 CIFAR stem at
# width 64 (the full model, 44.7 MB of f32 gradients), WORKERS (2) workers, batch 16 each, 256
# images, links RATES (10 Gbit/s, 1 Gbit/s, 200 Mbit/s; "off" for plain veth), the modes MODES
# (off, and on with 25 MB and 5 MB buckets) alternating, RUNS (2) runs each. Reads rank 0's
# mean phase times (the first step excluded) from its log: the backward, the all-reduce phase
# (the exposed wait) and the collective's whole time. As root, from the repository root,
# binaries built (BIN_DIR, default $CARGO_TARGET_DIR/debug).
set -euo pipefail
RUNS=${RUNS:-2}
WORKERS=${WORKERS:-2}
RATES=${RATES:-"off 10gbit 1gbit 200mbit"}
MODES=${MODES:-"off on:25 on:5"}
OUT=${OUT:-benchmarks/overlap-2026-12-06/netbed.jsonl}
: >"$OUT"
for run in $(seq "$RUNS"); do
  for rate in $RATES; do
    for mode in $MODES; do
      overlap=${mode%%:*}
      BUCKET_MB=25
      [[ $mode == *:* ]] && BUCKET_MB=${mode#*:}
      dir=$(mktemp -d /tmp/overlap.XXXXXX)
      line=$(BIN_DIR="${BIN_DIR:-${CARGO_TARGET_DIR:-target}/debug}" bash scripts/netbed.sh \
        --rate "$rate" --workers "$WORKERS" --out "$dir" -- --dataset synthetic --width 64 \
        --batch-size 16 --train-limit 256 --test-limit 32 --epochs 1 --seed 3 \
        --overlap "$overlap" --bucket-mb "$BUCKET_MB")
      phases=$(python3 - "$dir/worker-0.log" <<'PY'
import re, sys
text = re.sub(r"\x1b\[[0-9;]*m", "", open(sys.argv[1]).read())
m = re.findall(r"mean step ([\d.]+)s: data ([\d.]+)s forward ([\d.]+)s backward ([\d.]+)s "
               r"all-reduce ([\d.]+)s optimizer ([\d.]+)s; communication ([\d.]+)s", text)
keys = ["step_s", "data_s", "forward_s", "backward_s", "exposed_s", "optimizer_s", "communication_s"]
print(", ".join(f'"{k}": {v}' for k, v in zip(keys, m[-1])) if m else '"phases": null')
PY
)
      echo "{\"overlap\": \"$overlap\", \"bucket_mb\": $BUCKET_MB, \"run\": $run, $phases, ${line#\{}" | tee -a "$OUT"
      rm -rf "$dir"
    done
  done
done
