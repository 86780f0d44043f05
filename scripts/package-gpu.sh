#!/usr/bin/env bash
# Builds the CUDA release binaries and packs what scripts/gpu-check.sh needs into dist/ (under
# the 64 MiB a lent GPU machine accepts): resnet-cluster-gpu.tar.xz (resnet, coordinator,
# worker), gpu-check.sh and pytorch_baseline.py. On the GPU machine: bash dist/gpu-check.sh.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
cargo build --release -p resnet-cli --features cuda --manifest-path "$root/Cargo.toml"
mkdir -p "$root/dist"
# Line tables only: strip the rest of the debug info to keep the archive small.
tmp="$(mktemp -d)"
for b in resnet coordinator worker; do
  cp "$target/release/$b" "$tmp/$b"
  strip --strip-debug "$tmp/$b" 2>/dev/null || true
done
tar -cJf "$root/dist/resnet-cluster-gpu.tar.xz" -C "$tmp" resnet coordinator worker
rm -rf "$tmp"
cp "$root/scripts/gpu-check.sh" "$root/benchmarks/pytorch_baseline.py" "$root/dist/"
ls -l "$root/dist"
