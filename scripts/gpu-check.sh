#!/usr/bin/env bash
# GPU check for resnet-cluster: proves the CUDA path on a machine with an NVIDIA GPU in a few
# minutes, without cargo or network. Writes one JSON summary (default gpu-check/summary.json).
#
#   scripts/gpu-check.sh [--bin DIR] [--out DIR] [--cpu-dry-run]
#
# --bin DIR      where `resnet`, `coordinator` and `worker` (built with --features cuda) are;
#                default: next to this script, unpacking resnet-cluster-gpu.tar.xz there if the
#                binaries are missing (scripts/package-gpu.sh makes that archive).
# --out DIR      results directory [gpu-check].
# --cpu-dry-run  run every step that does not need a GPU on the CPU with tiny sizes (what CI
#                does to test this script); GPU-only steps are recorded as skipped.
#
# Steps: GPU facts (nvidia-smi); time to the first training step, twice (cold, then with whatever
# cache the first run left); ResNet-18 CIFAR-stem and ResNet-50 training at batch 256 (images/s);
# `coordinator --local --workers 1` on the GPU; a 2-worker cluster on one GPU over the TCP ring;
# the NCCL world-size-1 check; the PyTorch baseline for the same models (fp32 eager, bf16 AMP +
# channels_last) when `python3 -c "import torch"` works. Each step has its own time limit; the
# whole script stays under 8 minutes.
set -u -o pipefail

here="$(cd "$(dirname "$0")" && pwd)"
bin="$here"
out="gpu-check"
dry=0
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --cpu-dry-run) dry=1; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "gpu-check: unknown argument $1" >&2; exit 2 ;;
  esac
done
mkdir -p "$out"
logs="$out/logs"
mkdir -p "$logs"

if [ ! -x "$bin/resnet" ] && [ -f "$bin/resnet-cluster-gpu.tar.xz" ]; then
  echo "unpacking $bin/resnet-cluster-gpu.tar.xz" >&2
  tar -xJf "$bin/resnet-cluster-gpu.tar.xz" -C "$bin"
fi
for b in resnet coordinator worker; do
  if [ ! -x "$bin/$b" ]; then
    echo "gpu-check: $bin/$b not found (use --bin DIR, or put resnet-cluster-gpu.tar.xz next to the script)" >&2
    exit 2
  fi
done

# cubecl compiles kernels with NVRTC and the collective loads NCCL at run time: PyTorch's wheels
# carry both. Never put a toolkit `stubs` directory on the path (a stub libcuda refuses to work).
if command -v python3 >/dev/null 2>&1; then
  extra="$(python3 - <<'PY' 2>/dev/null
import glob, os, site
dirs = []
for base in site.getsitepackages() + [site.getusersitepackages()]:
    for d in sorted(glob.glob(os.path.join(base, "nvidia", "*", "lib"))):
        if "stubs" not in d:
            dirs.append(d)
print(":".join(dirs))
PY
)"
  if [ -n "$extra" ]; then export LD_LIBRARY_PATH="$extra${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; fi
fi

if [ "$dry" = 1 ]; then
  dev=(--cpu); width=8; batch=16; steps=2; limit=256
else
  dev=(--gpu 0); width=64; batch=256; steps=10; limit=4096
fi

json_str() { # a JSON string literal of $1 (control characters dropped)
  printf '"%s"' "$(printf '%s' "$1" | tr -d '\000-\037' | sed 's/\\/\\\\/g; s/"/\\"/g')"
}

results=()
# run NAME LIMIT_S CMD...: runs CMD with a time limit; its stdout's last line is kept when it
# is JSON; records ok, exit code, seconds and the log file.
run() {
  local name="$1" limit="$2"; shift 2
  # One budget for the whole script (8 minutes with set-up and the summary): a hanging step
  # cannot starve the ones after it of more than their share.
  local left=$(( deadline - $(date +%s) ))
  if [ "$left" -lt 15 ]; then skip "$name" "out of time (8-minute budget)"; return; fi
  [ "$limit" -le "$left" ] || limit=$left
  echo "== $name (limit ${limit}s): $*" >&2
  local t0 t1 rc last
  t0=$(date +%s.%N)
  timeout "$limit" "$@" >"$logs/$name.out" 2>"$logs/$name.err"
  rc=$?
  t1=$(date +%s.%N)
  last="$(grep -E '^\{.*\}$' "$logs/$name.out" | tail -n 1)"
  if [ -z "$last" ] && command -v python3 >/dev/null 2>&1; then
    # A multi-line JSON document (the coordinator's run summary): keep its scalar fields.
    last="$(python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
keep = {k: v for k, v in d.items() if isinstance(v, (int, float, str, bool))}
keep["final_accuracy"] = (d.get("final_eval") or {}).get("accuracy")
print(json.dumps(keep))' "$logs/$name.out" 2>/dev/null)"
  fi
  [ -n "$last" ] || last=null
  local secs; secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
  local ok=false; [ "$rc" = 0 ] && ok=true
  echo "   -> rc $rc in ${secs}s" >&2
  [ "$rc" = 0 ] || tail -n 5 "$logs/$name.err" >&2
  results+=("{\"step\": $(json_str "$name"), \"ok\": $ok, \"exit_code\": $rc, \"seconds\": $secs, \"result\": $last, \"log\": $(json_str "$logs/$name.err")}")
}
skip() {
  echo "== $1: skipped ($2)" >&2
  results+=("{\"step\": $(json_str "$1"), \"ok\": null, \"skipped\": $(json_str "$2")}")
}

started=$(date +%s)
deadline=$(( started + 450 ))
if [ "$dry" = 1 ]; then
  gpu="none (CPU dry run)"
  skip nvidia-smi "CPU dry run"
else
  gpu="$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -n 1)"
  run nvidia-smi 20 nvidia-smi
fi

# Time to the first training step (kernel compilation and autotuning happen here): cold with
# cubecl's compile/autotune log, again (cubecl's autotune cache persists in ~/.cache/cubecl when
# no Cargo.toml is above the working directory), and with autotuning at its minimum.
first_step() {
  run "$1" "$2" env "${@:3}" "$bin/resnet" bench "${dev[@]}" --depth 18 --stem cifar \
    --width "$width" --batch-size "$batch" --warmup 1 --steps 1 --json
}
first_step first-step-cold 150 CUBECL_DEBUG_LOG="$logs/cubecl-cold.log"
first_step first-step-again 90 RESNET_GPU_CHECK=1
first_step first-step-autotune-minimal 90 CUBECL_AUTOTUNE_LEVEL=minimal
run bench-r18-cifar 150 "$bin/resnet" bench "${dev[@]}" --depth 18 --stem cifar --width "$width" \
  --batch-size "$batch" --warmup 2 --steps "$steps" --json
run bench-r50-imagenet-stem 150 "$bin/resnet" bench "${dev[@]}" --depth 50 --stem imagenet \
  --width "$width" --batch-size "$batch" --warmup 2 --steps "$steps" --json
run local-1-worker 150 "$bin/coordinator" --local --workers 1 "${dev[@]}" --dataset synthetic \
  --width "$width" --batch-size "$batch" --epochs 1 --train-limit "$limit" --test-limit 512 --lr 0.05 --json

# Two worker processes on one device over the TCP ring (NCCL refuses two ranks on one GPU).
port=$(( 20000 + RANDOM % 20000 ))
cat >"$out/two-workers.sh" <<SH
set -u
"$bin/coordinator" --workers 2 --listen 127.0.0.1:$port --dataset synthetic --width $width \\
  --batch-size $batch --epochs 1 --train-limit $limit --test-limit 512 --lr 0.05 --json &
c=\$!
for w in w0 w1; do
  "$bin/worker" --coordinator http://127.0.0.1:$port ${dev[*]} --collective tcp --worker-id \$w >/dev/null &
done
rc=0
for p in \$(jobs -p); do wait \$p || rc=\$?; done
exit \$rc
SH
run two-workers-tcp-ring 200 bash "$out/two-workers.sh"

if [ "$dry" = 1 ]; then
  skip nccl-world-1 "CPU dry run"
else
  run nccl-world-1 90 "$bin/resnet" bench-allreduce --nccl-gpu 0 --repeats 10 --json
fi

baseline="$here/pytorch_baseline.py"
[ -f "$baseline" ] || baseline="$here/../benchmarks/pytorch_baseline.py"
if [ "$dry" = 0 ] && [ -f "$baseline" ] && python3 -c "import torch; assert torch.cuda.is_available()" >/dev/null 2>&1; then
  for model in "18 cifar" "50 imagenet"; do
    set -- $model
    run "pytorch-r$1-$2-fp32" 120 python3 "$baseline" --cuda --depth "$1" --stem "$2" \
      --batch-size "$batch" --warmup 3 --steps "$steps" --json
    run "pytorch-r$1-$2-bf16-channels-last" 120 python3 "$baseline" --cuda --depth "$1" --stem "$2" \
      --batch-size "$batch" --warmup 3 --steps "$steps" --amp-bf16 --channels-last --json
  done
else
  skip pytorch "no CUDA-enabled torch (or CPU dry run)"
fi

{
  printf '{\n  "gpu": %s,\n  "dry_run": %s,\n  "total_seconds": %s,\n  "steps": [\n' \
    "$(json_str "$gpu")" "$([ "$dry" = 1 ] && echo true || echo false)" "$(( $(date +%s) - started ))"
  n=${#results[@]}
  for i in "${!results[@]}"; do
    sep=","; [ "$i" = $((n - 1)) ] && sep=""
    printf '    %s%s\n' "${results[$i]}" "$sep"
  done
  printf '  ]\n}\n'
} >"$out/summary.json"
echo "summary: $out/summary.json" >&2
failed=$(grep -c '"ok": false' "$out/summary.json" || true)
[ "$failed" = 0 ]
