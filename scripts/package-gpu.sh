#!/usr/bin/env bash
# Builds the CUDA binaries and packs what scripts/gpu-check.sh needs into dist/, under the 64 MiB
# a lent GPU machine accepts: resnet-cluster-gpu.tar.xz (resnet, coordinator, worker),
# gpu-check.sh and its Python helpers (pytorch_baseline.py, summarize_*.py). On the GPU machine:
# bash dist/gpu-check.sh.
#
# The build uses the workspace's one profile (dev: dependencies at opt-level 3, ours at 2;
# dependencies and resnet-kernels without debug assertions or overflow checks), so it shares
# artifacts with the tests and clippy; GPU step time is in the kernels, not in host code.
# The three binaries are mostly the same code: xz with a dictionary larger than one binary
# stores the second and third almost for free (about 22 MB for the three, from 230 MB stripped).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
cargo build -p resnet-cli --features cuda --bins --manifest-path "$root/Cargo.toml"
mkdir -p "$root/dist"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
for b in resnet coordinator worker; do
  strip -s "$target/debug/$b" -o "$tmp/$b"
done
tar -cf - -C "$tmp" resnet coordinator worker \
  | xz -6 --lzma2=dict=256MiB >"$root/dist/resnet-cluster-gpu.tar.xz"
cp "$root/scripts/gpu-check.sh" "$root/benchmarks/pytorch_baseline.py" \
  "$root/benchmarks/summarize_profile.py" "$root/benchmarks/summarize_tuning.py" \
  "$root/benchmarks/summarize_gpu_check.py" "$root/dist/"
ls -l "$root/dist"
