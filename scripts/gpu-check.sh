#!/usr/bin/env bash
# GPU check for resnet-cluster: proves the CUDA path on a machine with an NVIDIA GPU in a few
# minutes, without cargo or network. Writes one JSON summary (default gpu-check/summary.json)
# and the same as Markdown table rows (summary.md).
#
#   scripts/gpu-check.sh [--bin DIR] [--out DIR] [--budget SECONDS] [--kernels "LIST"]
#                        [--compare-kernels] [--no-pytorch] [--cpu-dry-run]
#
# --bin DIR         where `resnet`, `coordinator` and `worker` (built with --features cuda) are;
#                   default: next to this script, unpacking resnet-cluster-gpu.tar.xz there if
#                   the binaries are missing (scripts/package-gpu.sh makes that archive).
# --out DIR         results directory [gpu-check].
# --budget SECONDS  time for all steps together [450]; a step that would start with less than
#                   15 s left is recorded as skipped, and each step's limit is cut to what is left.
# --kernels "LIST"  kernel configurations whose cold first step is measured, in order
#                   ["cudnn tuned gemm"]; the first that finishes a step runs the benchmarks, and
#                   the later ones are skipped (the fallbacks).
# --compare-kernels run every configuration of --kernels cold; the best one (least first step
#                   + 100 steady steps) runs the benchmarks.
# --no-pytorch      skip the PyTorch baseline.
# --cpu-dry-run     run every step that does not need a GPU on the CPU with tiny sizes (what CI
#                   does to test this script); GPU-only steps are recorded as skipped.
#
# Steps, most important first: GPU facts (nvidia-smi); the NCCL world-size-1 check; cuDNN's
# numbers: every convolution pass of every ResNet-18 shape (f32 with TF32, f32 strict, bf16) and
# ResNet-50 shape (ImageNet stem at 64x64) against Burn's f32 convolution on the CPU
# (`resnet conv-check`, failing above its stated tolerance); the fused CUDA optimizer update
# against Burn's optimizer (`optim-check-r18`); the cold
# first training step of ResNet-18 (CIFAR stem, batch 256) in each kernel configuration, each
# with an empty kernel cache and a log of the kernels it compiles and tunes (`tuned`: fusion
# off, each convolution pass and shape timed over a few fixed candidates, gemm's among them, the
# fastest kept (crates/kernels/src/conv/tune_plan.rs); `gemm`: fusion off,
# fixed implicit-GEMM convolutions and classifier matmul; `-spread`: strided input gradients as
# stride-1 GEMMs (RESNET_CUDA_DGRAD=spread); `-taps`: weight gradients as batched matmuls per
# kernel tap (RESNET_CUDA_WGRAD=taps); `autotune`: Burn's default, which
# did not finish a step in 120 s on an H200; `direct`: fusion off, Burn's direct convolutions);
# (`cudnn`: convolutions and training-mode BatchNorm through cuDNN, gemm and Burn's ops where
# it is missing);
# with the best configuration: ResNet-18 again in a new process with the cache the cold run left
# (a restarted worker's first step) and its steady-state images/s, then the same with the fused
# optimizer (`bench-r18-cifar-fused-optim`) and inference (`bench-r18-cifar-eval`, PyTorch's
# eval in the same sitting when torch is there); when `cudnn` is the best, at
# the end (gemm compiles cold), `gemm` in the same sitting and a short training run with each
# from one seed whose losses and accuracy must agree (`train-cudnn-vs-gemm`); after `tuned`, its choices
# per shape (summarize_tuning.py) and `gemm-spread` from the same cache as the same-sitting
# baseline; `gemm-spread-taps` (the weight-gradient A/B, unless it is the best configuration);
# PyTorch's ResNet-18 fp32 (when `import torch` works), so the ratio comes from one
# sitting; `coordinator --local --workers 1`, a 2-worker cluster on one GPU over the TCP ring,
# one worker over NCCL with host-staged and with device gradient buffers (same hash expected), a
# per-kernel device-time profile of ResNet-18, ResNet-18 with bf16 convolutions, ResNet-50
# (ImageNet stem) training at batch 256; then the rest of the PyTorch baseline (bf16 AMP +
# channels_last, ResNet-50).
set -u -o pipefail

here="$(cd "$(dirname "$0")" && pwd)"
bin="$here"
out="gpu-check"
dry=0
budget=450
kernels="cudnn tuned gemm"
compare=0
pytorch=1
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --budget) budget="$2"; shift 2 ;;
    --kernels) kernels="$2"; shift 2 ;;
    --compare-kernels) compare=1; shift ;;
    --no-pytorch) pytorch=0; shift ;;
    --cpu-dry-run) dry=1; shift ;;
    -h|--help) sed -n '2,48p' "$0"; exit 0 ;;
    *) echo "gpu-check: unknown argument $1" >&2; exit 2 ;;
  esac
done
case "$budget" in
  ''|*[!0-9]*) echo "gpu-check: --budget takes whole seconds, got '$budget'" >&2; exit 2 ;;
esac
for k in $kernels; do
  case "$k" in
    cudnn|tuned|gemm|gemm-spread|gemm-taps|gemm-spread-taps|autotune|direct) ;;
    *) echo "gpu-check: --kernels takes cudnn, tuned, gemm[-spread][-taps], autotune or direct, got '$k'" >&2; exit 2 ;;
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
  dev=(--cpu); width=8; batch=16; steps=2; limit=256; cbatch=2
else
  dev=(--gpu 0); width=64; batch=256; steps=10; limit=4096; cbatch=8
fi

json_str() { # a JSON string literal of $1 (control characters dropped)
  printf '"%s"' "$(printf '%s' "$1" | tr -d '\000-\037' | sed 's/\\/\\\\/g; s/"/\\"/g')"
}

results=()
# run NAME LIMIT_S CMD...: runs CMD with a time limit; its stdout's last line is kept when it
# is JSON; records ok, exit code, seconds and the log file.
run() {
  local name="$1" limit="$2"; shift 2
  # One budget for the whole script: a hanging step cannot starve the ones after it of more
  # than its own limit.
  local left=$(( deadline - $(date +%s) ))
  if [ "$left" -lt 15 ]; then skip "$name" "out of time (${budget}-second budget)"; return; fi
  [ "$limit" -le "$left" ] || limit=$left
  echo "== $name (limit ${limit}s): $*" >&2
  local t0 t1 rc last
  t0=$(date +%s.%N)
  timeout -k 5 "$limit" "$@" >"$logs/$name.out" 2>"$logs/$name.err"
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
  if [ "$rc" != 0 ]; then
    # The first errors (the cause, e.g. a coordinator that could not bind), then the last lines.
    grep -m 3 -i 'error' "$logs/$name.err" >&2
    tail -n 5 "$logs/$name.err" >&2
  fi
  results+=("{\"step\": $(json_str "$name"), \"ok\": $ok, \"exit_code\": $rc, \"seconds\": $secs, \"result\": $last, \"log\": $(json_str "$logs/$name.err")}")
}
skip() {
  echo "== $1: skipped ($2)" >&2
  results+=("{\"step\": $(json_str "$1"), \"ok\": null, \"skipped\": $(json_str "$2")}")
}

# A port no socket uses now, chosen by the kernel (a random pick collided with the sockets of
# whatever else runs on the machine, and the coordinator then fails to bind).
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

started=$(date +%s)
deadline=$(( started + budget ))
if [ "$dry" = 1 ]; then
  gpu="none (CPU dry run)"
  skip nvidia-smi "CPU dry run"
else
  gpu="$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -n 1)"
  run nvidia-smi 20 nvidia-smi
fi
if [ "$dry" = 1 ]; then
  skip nccl-world-1 "CPU dry run"
else
  run nccl-world-1 45 "$bin/resnet" bench-allreduce --nccl-gpu 0 --repeats 10 --json
fi

# cuDNN's numbers before any benchmark: each pass of each distinct convolution shape against
# Burn's f32 convolution on the CPU (batch $cbatch: the reference runs on the CPU), and each
# BatchNorm shape's training step through cuDNN against the model's generic code. The
# tolerances are `resnet conv-check`'s: 1e-2 for TF32, 1e-3 for strict f32, 3e-2 for bf16,
# 1e-3 for BatchNorm.
# On the CPU dry run the same command checks the CPU kernels against Burn's (1e-4).
conv_check() { # conv_check NAME LIMIT ARGS...
  local name="$1" limit="$2"; shift 2
  run "$name" "$limit" env RESNET_CUDA_CONV=cudnn RESNET_CUDA_BN=cudnn \
    RESNET_KERNEL_CACHE="$out/kernels-cudnn" "$bin/resnet" conv-check "${dev[@]}" --width "$width" --batch-size "$cbatch" --json "$@"
}
conv_check conv-check-r18 60 --depth 18 --stem cifar --checks conv,bn
conv_check conv-check-r18-strict 60 --depth 18 --stem cifar --cuda-math strict --checks conv,bn
conv_check conv-check-r18-bf16 60 --depth 18 --stem cifar --conv-precision bf16 --checks conv,bn
# The same passes channels-last (--cuda-layout nhwc): cuDNN's NHWC descriptors on operands laid
# out by the convolution node's casts.
conv_check conv-check-r18-bf16-nhwc 60 --depth 18 --stem cifar --conv-precision bf16 \
  --cuda-layout nhwc --checks conv
conv_check conv-check-r50 90 --depth 50 --stem imagenet --image-size 64 --checks conv,bn
# The fused optimizer update (--cuda-optim fused: one kernel per parameter) against Burn's
# optimizer on the GPU, every rule over ResNet-18's parameters with the same synthetic gradients
# (tolerance 1e-4 of the update: fused multiply-adds; a wrong update is off by order 1). A step
# of its own, so a failure here cannot cost the convolution numbers above.
# The BatchNorm node with the residual add and the ReLU inside (--cuda-bn cudnn-fused), every
# ResNet-18 BatchNorm shape with and without a residual, against the generic code on the CPU.
conv_check conv-check-r18-bn-fused 60 --depth 18 --stem cifar --checks bn --cuda-bn cudnn-fused
run optim-check-r18 60 env RESNET_CUDA_CONV=cudnn RESNET_CUDA_OPTIM=fused \
  RESNET_KERNEL_CACHE="$out/kernels-cudnn" "$bin/resnet" conv-check "${dev[@]}" --width "$width" \
  --batch-size "$cbatch" --depth 18 --stem cifar --checks optim --json

# The PyTorch baseline (benchmarks/pytorch_baseline.py), when torch with CUDA imports here:
# ResNet-18 fp32 right after our steady-state numbers (the ratio must come from one sitting even
# if the budget runs out later), the other cases at the end.
baseline="$here/pytorch_baseline.py"
[ -f "$baseline" ] || baseline="$here/../benchmarks/pytorch_baseline.py"
torch_ok=0
r18_fp32=0
if [ "$pytorch" = 1 ] && [ "$dry" = 0 ] && [ -f "$baseline" ] \
  && python3 -c "import torch; assert torch.cuda.is_available()" >/dev/null 2>&1; then
  torch_ok=1
fi
pytorch_case() { # pytorch_case DEPTH STEM fp32|bf16 [eval]
  local extra=() name="pytorch-r$1-$2-fp32"
  if [ "$3" = bf16 ]; then extra=(--amp-bf16 --channels-last); name="pytorch-r$1-$2-bf16-channels-last"; fi
  if [ "${4:-}" = eval ]; then extra+=(--mode eval); name="$name-eval"; fi
  run "$name" 45 python3 "$baseline" --cuda --depth "$1" --stem "$2" --batch-size "$batch" \
    --warmup 3 --steps "$steps" "${extra[@]}" --json
}

# Kernel configurations (`--kernels`): `gemm` turns fusion off and runs fixed implicit-GEMM
# convolutions and a fixed classifier matmul; `-spread` and `-taps` add the experimental input
# and weight gradients (see --help); `autotune` is Burn's default (fusion, every convolution and
# matmul autotuned per shape); `direct` is fusion off with Burn's direct convolution kernels.
# Each cold run gets an empty kernel cache of its own and logs the kernels it compiles and its
# autotune decisions; the log's size every 2 s shows when the step compiles (the log grows) and
# when it runs or times kernels.
conv_env() { # conv_env KIND CACHE_DIR: the environment for that configuration
  local e="RESNET_CUDA_CONV=${1%%-*} RESNET_KERNEL_CACHE=$2"
  # cuDNN's BatchNorm goes with cuDNN's convolutions; the other configurations keep Burn's.
  [ "${1%%-*}" = cudnn ] && e="$e RESNET_CUDA_BN=cudnn"
  case "-$1-" in *-spread-*) e="$e RESNET_CUDA_DGRAD=spread" ;; esac
  case "-$1-" in *-taps-*) e="$e RESNET_CUDA_WGRAD=taps" ;; esac
  echo "$e"
}
finished() { grep -q '^{' "$logs/first-step-$1.out" 2>/dev/null; }
done_kind=""
for kind in $kernels; do
  if [ "$compare" = 0 ] && [ -n "$done_kind" ]; then
    skip "first-step-$kind" "$done_kind finished its first step (--compare-kernels runs every configuration)"
    continue
  fi
  klog="$logs/kernels-$kind.log"
  ( while sleep 2; do echo "$(date +%s.%N) $(stat -c %s "$klog" 2>/dev/null || echo 0)"; done ) \
    >"$logs/kernels-$kind.growth" &
  grow=$!
  # `tuned` compiles and times about ten candidates per shape and pass: more time cold.
  step_limit=200; [ "$kind" = tuned ] && step_limit=240
  run "first-step-$kind" "$step_limit" env $(conv_env "$kind" "$out/kernels-$kind") \
    RESNET_CUDA_LOG="$klog" "$bin/resnet" bench "${dev[@]}" --depth 18 --stem cifar \
    --width "$width" --batch-size "$batch" --warmup 1 --steps 3 --json
  kill "$grow" 2>/dev/null
  if [ "$kind" = tuned ]; then
    # Every candidate's time per shape and pass, also when the step ran out of time (the log
    # holds the tunings that completed).
    if [ "$dry" = 1 ]; then
      skip tuning-r18 "CPU dry run (the tuning is CUDA's)"
    else
      tune_sum="$here/summarize_tuning.py"
      [ -f "$tune_sum" ] || tune_sum="$here/../benchmarks/summarize_tuning.py"
      run tuning-r18 30 python3 "$tune_sum" "$klog" --json
    fi
  fi
  if finished "$kind"; then done_kind="$kind"; fi
done

# The best configuration: the least first step + 100 steady steps among those that finished.
best="$(python3 - "$logs" $kernels <<'PY' 2>/dev/null
import json, sys
best = None
for kind in sys.argv[2:]:
    try:
        lines = [l for l in open(f"{sys.argv[1]}/first-step-{kind}.out") if l.startswith("{")]
        r = json.loads(lines[-1])
    except (OSError, IndexError, ValueError):
        continue
    score = r["first_step_s"] + 100 * r["median_step_s"]
    if best is None or score < best[0]:
        best = (score, kind)
print(best[1] if best else "none")
PY
)"
[ -n "$best" ] || best=none
echo "best kernel configuration: $best" >&2
if [ "$best" = none ]; then
  # Nothing finished a full-size step: the benchmarks below would time out the same way.
  for s in bench-r18-cifar local-1-worker two-workers-tcp-ring nccl-buffers-host-vs-device \
    bench-r18-cifar-bf16 bench-r50-imagenet-stem; do
    skip "$s" "no kernel configuration finished a first step"
  done
else
  best_env=(env $(conv_env "$best" "$out/kernels-$best"))
  # A new process with the kernel cache the cold run left (what a restarted worker sees: its
  # first_step_s), then steady-state images/s.
  run bench-r18-cifar 60 "${best_env[@]}" "$bin/resnet" bench "${dev[@]}" --depth 18 \
    --stem cifar --width "$width" --batch-size "$batch" --warmup 2 --steps "$steps" --json
  if [ "$best" = tuned ]; then
    # The same-sitting baseline: gemm with spread strided input gradients, whose kernels the
    # tuned run compiled among its candidates (the same cache, so no cold compilation here).
    run bench-r18-cifar-gemm-spread 60 env $(conv_env gemm-spread "$out/kernels-tuned") \
      "$bin/resnet" bench "${dev[@]}" --depth 18 --stem cifar --width "$width" \
      --batch-size "$batch" --warmup 2 --steps "$steps" --json
  fi
  # The weight-gradient hypothesis as a plain A/B (benchmarks/cubek_blocks.py: gemm's weight
  # gradients of the 32x32 layers launch 36 blocks or fewer on 132 SMs, each walking a
  # reduction of 8,192 steps): gemm with the tap-matmul weight gradients and spread strided
  # input gradients. From tuned's cache nothing compiles (both are among its candidates);
  # after plain gemm the tap matmuls and the spread kernels compile here, into the same cache.
  case "$best" in
    *taps*|cudnn) ;;
    *) run bench-r18-cifar-gemm-spread-taps 90 env $(conv_env gemm-spread-taps "$out/kernels-$best") \
         "$bin/resnet" bench "${dev[@]}" --depth 18 --stem cifar --width "$width" \
         --batch-size "$batch" --warmup 2 --steps "$steps" --json ;;
  esac
  # The fused optimizer (one kernel per parameter instead of Burn's ~400 launches a step), from
  # the same cache: only its own kernels compile. Its numbers were checked by optim-check-r18.
  case "$best" in
    cudnn|gemm*|tuned|direct)
      run bench-r18-cifar-fused-optim 60 "${best_env[@]}" RESNET_CUDA_OPTIM=fused "$bin/resnet" \
        bench "${dev[@]}" --depth 18 --stem cifar --width "$width" --batch-size "$batch" \
        --warmup 2 --steps "$steps" --json ;;
    *) skip bench-r18-cifar-fused-optim "the fused optimizer needs fusion off ($best has it on)" ;;
  esac
  # The add+ReLU inside cuDNN's BatchNorm node, alone and with the fused optimizer (checked by
  # conv-check-r18-bn-fused above).
  if [ "$best" = cudnn ]; then
    run bench-r18-cifar-bn-fused 60 "${best_env[@]}" RESNET_CUDA_BN=cudnn-fused "$bin/resnet" \
      bench "${dev[@]}" --depth 18 --stem cifar --width "$width" --batch-size "$batch" \
      --warmup 2 --steps "$steps" --json
    run bench-r18-cifar-all-fused 60 "${best_env[@]}" RESNET_CUDA_BN=cudnn-fused \
      RESNET_CUDA_OPTIM=fused "$bin/resnet" bench "${dev[@]}" --depth 18 --stem cifar \
      --width "$width" --batch-size "$batch" --warmup 2 --steps "$steps" --json
  fi
  # Inference (#18's target: eval >= 1.0x PyTorch): the forward alone, no autodiff.
  run bench-r18-cifar-eval 60 "${best_env[@]}" "$bin/resnet" bench "${dev[@]}" --depth 18 \
    --stem cifar --width "$width" --batch-size "$batch" --warmup 2 --steps "$steps" \
    --mode eval --json
  # The same with BatchNorm (+ add + ReLU) as one kernel (checked by conv-check-r18-bn-fused's
  # eval column).
  if [ "$best" = cudnn ]; then
    run bench-r18-cifar-eval-fused 60 "${best_env[@]}" RESNET_CUDA_BN=cudnn-fused \
      "$bin/resnet" bench "${dev[@]}" --depth 18 --stem cifar --width "$width" \
      --batch-size "$batch" --warmup 2 --steps "$steps" --mode eval --json
  fi
  if [ "$torch_ok" = 1 ]; then
    pytorch_case 18 cifar fp32; r18_fp32=1
    pytorch_case 18 cifar fp32 eval
  fi
  run local-1-worker 60 "${best_env[@]}" "$bin/coordinator" --local --workers 1 "${dev[@]}" \
    --dataset synthetic --width "$width" --batch-size "$batch" --epochs 1 --train-limit "$limit" \
    --test-limit 512 --lr 0.05 --json

  # Two worker processes on one device over the TCP ring (NCCL refuses two ranks on one GPU).
  port=$(free_port)
  cat >"$out/two-workers.sh" <<SH
set -u
# A time limit stops this shell: take the cluster's processes down with it.
trap 'kill \$(jobs -p) 2>/dev/null' EXIT TERM
export $(conv_env "$best" "$out/kernels-$best")
"$bin/coordinator" --workers 2 --listen 127.0.0.1:$port --dataset synthetic --width $width \\
  --batch-size $batch --epochs 1 --train-limit $limit --test-limit 512 --lr 0.05 --json &
for w in w0 w1; do
  "$bin/worker" --coordinator http://127.0.0.1:$port ${dev[*]} --collective tcp --worker-id \$w >/dev/null &
done
rc=0
for p in \$(jobs -p); do wait \$p || rc=\$?; done
exit \$rc
SH
  run two-workers-tcp-ring 90 bash "$out/two-workers.sh"

  # One CUDA worker over NCCL (world size 1), gradients staged through the host and then
  # reduced in GPU memory (--nccl-buffers device): NCCL copies out of place at world size 1, so
  # the same seed must give the same final parameter hash; seconds show what staging costs.
  # With device buffers the all-reduce overlaps the backward by default (buckets queued on
  # NCCL's stream behind an event on cubecl's, crates/train/src/trainer/overlap_device.rs);
  # a third run with --overlap off (one flat device all-reduce after the backward) must give
  # the same hash too.
  port=$(free_port); port2=$(free_port); port3=$(free_port)
  while [ "$port2" = "$port" ]; do port2=$(free_port); done
  while [ "$port3" = "$port" ] || [ "$port3" = "$port2" ]; do port3=$(free_port); done
  cat >"$out/nccl-buffers.sh" <<SH
set -u
trap 'kill \$(jobs -p) 2>/dev/null' EXIT TERM
export $(conv_env "$best" "$out/kernels-$best")
# cuDNN's fastest weight-gradient algorithms accumulate with atomics, so two runs differ in the
# last bits; the comparison needs the deterministic ones (the flag changes nothing elsewhere).
export RESNET_DETERMINISTIC=true
one() { # one host|device PORT [RUN FLAGS]: a 1-worker cluster; prints the worker's JSON line
  local b=\$1 p=\$2; shift 2
  "$bin/coordinator" --workers 1 --listen 127.0.0.1:\$p --dataset synthetic --width $width \\
    --batch-size $batch --epochs 1 --train-limit $((limit / 4)) --test-limit 256 --lr 0.05 \\
    --seed 3 "\$@" >/dev/null &
  local c=\$!
  "$bin/worker" --coordinator http://127.0.0.1:\$p ${dev[*]} --nccl-buffers "\$b" \\
    --worker-id "w-\$b" --json | grep '^{'
  local rc=\$?
  wait \$c || rc=\$?
  return \$rc
}
t0=\$(date +%s.%N); h=\$(one host $port) || exit 1; t1=\$(date +%s.%N)
d=\$(one device $port2) || exit 1; t2=\$(date +%s.%N)
f=\$(one device $port3 --overlap off) || exit 1; t3=\$(date +%s.%N)
python3 -c '
import json, sys
h, d, f = (json.loads(a) for a in sys.argv[1:4])
t0, t1, t2, t3 = map(float, sys.argv[4:8])
same = h["param_hash"] == d["param_hash"] == f["param_hash"]
print(json.dumps({"host_hash": h["param_hash"], "device_hash": d["param_hash"],
                  "device_flat_hash": f["param_hash"], "identical": same, "steps": h["steps"],
                  "host_s": t1 - t0, "device_s": t2 - t1, "device_flat_s": t3 - t2}))
sys.exit(0 if same else 3)' "\$h" "\$d" "\$f" "\$t0" "\$t1" "\$t2" "\$t3"
SH
  run nccl-buffers-host-vs-device 120 bash "$out/nccl-buffers.sh"
  # Where the steady-state step goes: every kernel timed on the device (cached kernels, so no
  # compilation in the profile), summed per kernel in $logs/profile-r18.log.
  run profile-r18-cifar 45 "${best_env[@]}" RESNET_CUDA_PROFILE="$logs/profile-r18.log" \
    "$bin/resnet" bench "${dev[@]}" --depth 18 --stem cifar --width "$width" \
    --batch-size "$batch" --warmup 1 --steps 2 --json
  # What is left with everything fused (BatchNorm's add+ReLU and running statistics, the
  # optimizer; packed weights): the launches per step next to the default's.
  if [ "$best" = cudnn ]; then
    run profile-r18-all-fused 45 "${best_env[@]}" RESNET_CUDA_BN=cudnn-fused \
      RESNET_CUDA_OPTIM=fused RESNET_CUDA_PROFILE="$logs/profile-r18-all-fused.log" \
      "$bin/resnet" bench "${dev[@]}" --depth 18 --stem cifar --width "$width" \
      --batch-size "$batch" --warmup 1 --steps 2 --json
  fi
  summarize="$here/summarize_profile.py"
  [ -f "$summarize" ] || summarize="$here/../benchmarks/summarize_profile.py"
  if [ "$dry" = 1 ]; then
    skip profile-r18-top "CPU dry run (cubecl's profiler is CUDA's)"
  else
    run profile-r18-top 30 python3 "$summarize" "$logs/profile-r18.log" --steps 3 --top 25 --json
    if [ "$best" = cudnn ]; then
      run profile-r18-all-fused-top 30 python3 "$summarize" "$logs/profile-r18-all-fused.log" \
        --steps 3 --top 25 --json
    fi
    # The same for plain `gemm` when another configuration won: kernel by kernel, what changed.
    if [ "$best" != gemm ] && grep -q '^{' "$logs/first-step-gemm.out" 2>/dev/null; then
      run profile-r18-cifar-gemm 45 env $(conv_env gemm "$out/kernels-gemm") \
        RESNET_CUDA_PROFILE="$logs/profile-r18-gemm.log" "$bin/resnet" bench "${dev[@]}" \
        --depth 18 --stem cifar --width "$width" --batch-size "$batch" --warmup 1 --steps 2 --json
      run profile-r18-gemm-top 30 python3 "$summarize" "$logs/profile-r18-gemm.log" --steps 3 \
        --top 25 --json
    fi
  fi
  # bf16 convolutions (--conv-precision bf16): new kernels for bf16 tensors, compiled cold
  # into the same cache; the JSON's first_step_s says what that costs, images/s what it buys.
  run bench-r18-cifar-bf16 150 "${best_env[@]}" "$bin/resnet" bench "${dev[@]}" --depth 18 \
    --stem cifar --width "$width" --batch-size "$batch" --warmup 2 --steps "$steps" \
    --conv-precision bf16 --json
  if [ "$best" = cudnn ]; then
    run bench-r18-cifar-bf16-nhwc 60 "${best_env[@]}" RESNET_CUDA_LAYOUT=nhwc "$bin/resnet" \
      bench "${dev[@]}" --depth 18 --stem cifar --width "$width" --batch-size "$batch" \
      --warmup 2 --steps "$steps" --conv-precision bf16 --json
    run bench-r18-cifar-bf16-all-fused 60 "${best_env[@]}" RESNET_CUDA_BN=cudnn-fused \
      RESNET_CUDA_OPTIM=fused "$bin/resnet" bench "${dev[@]}" --depth 18 --stem cifar \
      --width "$width" --batch-size "$batch" --warmup 2 --steps "$steps" \
      --conv-precision bf16 --json
  fi
  # New shapes: this one compiles (and with autotune, tunes) its own kernels.
  run bench-r50-imagenet-stem 150 "${best_env[@]}" "$bin/resnet" bench "${dev[@]}" --depth 50 \
    --stem imagenet --width "$width" --batch-size "$batch" --warmup 2 --steps "$steps" --json
  # ResNet-50 has 53 BatchNorms and 161 parameters (~2,000 launches a step unfused, estimated
  # from the ResNet-18 profile), so fusion should matter more than for ResNet-18.
  if [ "$best" = cudnn ]; then
    run bench-r50-imagenet-stem-all-fused 60 "${best_env[@]}" RESNET_CUDA_BN=cudnn-fused \
      RESNET_CUDA_OPTIM=fused "$bin/resnet" bench "${dev[@]}" --depth 50 --stem imagenet \
      --width "$width" --batch-size "$batch" --warmup 2 --steps "$steps" --json
  fi
  # Last, because gemm compiles cold here (about 110 s on an H200) and the convolution passes
  # were already checked shape by shape against the CPU (conv-check above).
  if [ "$best" = cudnn ]; then
    # The same-sitting baseline: gemm, compiled cold into the cudnn run's cache (BatchNorm and
    # the other non-convolution kernels are shared).
    run bench-r18-cifar-gemm 200 env $(conv_env gemm "$out/kernels-cudnn") "$bin/resnet" bench \
      "${dev[@]}" --depth 18 --stem cifar --width "$width" --batch-size "$batch" --warmup 2 \
      --steps "$steps" --json
    # The end-to-end proof that cuDNN's backward is right: a short training run from one seed
    # with each kernel set (same shapes as the benchmarks, so nothing compiles); per epoch the
    # training losses must agree within 0.1 + 10% and the training accuracies within 0.05 (TF32
    # rounding makes the runs drift apart, but not by more), and both final test accuracies must
    # be far above chance (>= 0.3 on 10 classes; none on the CPU dry run, whose width 8 and 2
    # steps per epoch learn little). The test accuracies are not compared: after 32 steps they
    # rest on BatchNorm running statistics that move a lot from step to step (on an H200,
    # gemm's own went 0.34 -> 0.71 between its two epochs, and cudnn vs gemm ended 0.81 vs
    # 0.71 with matching training curves).
    min_acc=0.3; [ "$dry" = 1 ] && min_acc=0
    cat >"$out/train-agree.sh" <<SH
set -u
train() { # train KIND: the run summary's JSON on stdout
  env $(conv_env cudnn "$out/kernels-cudnn") RESNET_CUDA_CONV=\$1 \\
    RESNET_CUDA_BN=\$([ "\$1" = cudnn ] && echo cudnn || echo burn) "$bin/resnet" train ${dev[*]} \\
    --dataset synthetic --width $width --batch-size $batch --train-limit $limit --test-limit 512 \\
    --epochs 2 --lr 0.05 --seed 9 --out "$out/train-\$1" --json
}
a=\$(train cudnn) || exit 1
b=\$(train gemm) || exit 1
python3 -c '
import json, sys
a, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
la = [e["train_loss"] for e in a["history"]]
lb = [e["train_loss"] for e in b["history"]]
ta = [e["train_accuracy"] for e in a["history"]]
tb = [e["train_accuracy"] for e in b["history"]]
acc = [(x.get("final_eval") or {}).get("accuracy") for x in (a, b)]
loss_ok = len(la) == len(lb) and all(abs(x - y) <= 0.1 + 0.1 * abs(y) for x, y in zip(la, lb))
train_ok = len(ta) == len(tb) and all(abs(x - y) <= 0.05 for x, y in zip(ta, tb))
acc_ok = None not in acc and min(acc) >= $min_acc
print(json.dumps({"cudnn_losses": la, "gemm_losses": lb, "cudnn_train_accuracy": ta,
                  "gemm_train_accuracy": tb, "cudnn_accuracy": acc[0], "gemm_accuracy": acc[1],
                  "agree": loss_ok and train_ok and acc_ok}))
sys.exit(0 if loss_ok and train_ok and acc_ok else 3)' "\$a" "\$b"
SH
    run train-cudnn-vs-gemm 120 bash "$out/train-agree.sh"
  fi
fi

if [ "$pytorch" = 0 ]; then
  skip pytorch "--no-pytorch"
elif [ "$torch_ok" = 1 ]; then
  [ "$r18_fp32" = 1 ] || pytorch_case 18 cifar fp32
  pytorch_case 18 cifar bf16
  pytorch_case 50 imagenet fp32
  pytorch_case 50 imagenet bf16
else
  skip pytorch "no CUDA-enabled torch (or CPU dry run)"
fi

{
  printf '{\n  "gpu": %s,\n  "dry_run": %s,\n  "best_kernels": %s,\n  "total_seconds": %s,\n  "steps": [\n' \
    "$(json_str "$gpu")" "$([ "$dry" = 1 ] && echo true || echo false)" "$(json_str "$best")" \
    "$(( $(date +%s) - started ))"
  n=${#results[@]}
  for i in "${!results[@]}"; do
    sep=","; [ "$i" = $((n - 1)) ] && sep=""
    printf '    %s%s\n' "${results[$i]}" "$sep"
  done
  printf '  ]\n}\n'
} >"$out/summary.json"
echo "summary: $out/summary.json" >&2
# The same as Markdown rows for benchmarks/RESULTS.md.
md="$here/summarize_gpu_check.py"
[ -f "$md" ] || md="$here/../benchmarks/summarize_gpu_check.py"
if [ -f "$md" ] && python3 "$md" "$out/summary.json" >"$out/summary.md" 2>/dev/null; then
  cat "$out/summary.md" >&2
fi
failed=$(grep -c '"ok": false' "$out/summary.json" || true)
[ "$failed" = 0 ]
