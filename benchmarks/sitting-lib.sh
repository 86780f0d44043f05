# Shared by the CPU sitting scripts (benchmarks/cpu-2026-12-07d on; the earlier ones keep their
# own copies as the record of what produced their sitting.jsonl). Source it, then set
#   OUT      the JSON-lines file (truncate it first),  PYTHON  the interpreter with torch,
#   VARIANTS entries "label=binary" or "label=binary=VAR=value" (an environment setting),
# and call `sitting_case depth stem mode batch steps optimizer` inside `for ROUND in ...`:
# each variant's `resnet bench` line, then PyTorch's, each tagged with the round (and ours with
# the variant), back to back. Same protocol as benchmarks/run_cpu.sh.
THREADS=$(nproc)

sitting_case() { # depth stem mode batch steps optimizer
  local args=(--depth "$1" --stem "$2" --mode "$3" --batch-size "$4" --warmup 2 --steps "$5" --optimizer "$6")
  echo "== round $ROUND: resnet$1 $2 $3 batch $4 ($6)" >&2
  local v label bin env
  for v in "${VARIANTS[@]}"; do
    IFS='=' read -r label bin env <<<"$v"
    env ${env:+"$env"} "$bin" bench "${args[@]}" --json 2>/dev/null \
      | sed "s/^{/{\"framework\":\"resnet-cluster (burn 0.21 flex)\",\"variant\":\"$label\",\"round\":$ROUND,/" >> "$OUT"
  done
  "$PYTHON" benchmarks/pytorch_baseline.py "${args[@]}" --json --threads "$THREADS" \
    | sed "s/^{/{\"round\":$ROUND,/" >> "$OUT"
}
