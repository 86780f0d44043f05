#!/usr/bin/env python3
"""How many thread blocks Burn 0.21's implicit-GEMM convolution launches, per ResNet conv and pass.

Why: on an H200 the backward pass of ResNet-18's CIFAR stem took 9x its forward (RESULTS.md,
"GPU: NVIDIA H200"). This script replays, in plain arithmetic, the tiling heuristic that
`--cuda-conv gemm` (Burn's `ConvStrategy::ImplicitGemm`, cubek-convolution 0.2's "simple sync
cyclic" algorithm on cmma tiles) runs for every convolution, and prints the grid it launches.
Sources, all in cubek-matmul / cubek-convolution 0.2.0 / cubecl 0.10.0:

- the GEMM of each pass (cubek-convolution kernels/*/launch.rs):
    forward      m = N*OH*OW, n = C_out,           k = C_in*KH*KW
    input grad   m = N*H*W,   n = C_in,            k = C_out*KH*KW
    weight grad  m = C_out,   n = C_in*KH*KW,      k = N*OH*OW
  with the channels of the gathered (im2col) operand padded to the 128-bit load width
  (`adjust_problem`: 4 f32 or 8 bf16 channels), which happens after the tiles are chosen;
- f32 operands run on the tensor cores as tf32 (`adjust_dtypes`), whose cmma tile is 16x16x8;
  bf16 tiles are 32x8x16 when m >= 4n, 8x32x16 when n >= 4m, else 16x16x16
  (`find_instruction_size`);
- planes (warps of 32) per block = (1024 / 32) / (tile_factor * precision_factor), where
  tile_factor = ceil(tile_n / 4), or 8 when m <= 4*tile_m or n <= 4*tile_n, and
  precision_factor = 2 for 4-byte stage elements (`infer_blueprint_plane`);
- with one row per plane (`MultiRowStrategy::Never`, the default of `SimpleArgs`) a block
  covers (planes*tile_m) x (planes*tile_n) outputs and steps through k by 32;
- the grid is ceil(m / block_m) * ceil(n / block_n) blocks: nothing splits k, so every block
  walks the whole reduction (`SmAllocation::Exact` only regroups the same blocks onto SMs).

The weight gradients of the high-resolution layers come out as a few dozen blocks of 64
threads, each stepping 8,192 times through a reduction over N*32*32 values, on a GPU with 132
SMs. Nothing here is measured; `scripts/gpu-check.sh` (`tuning-r18`) measures the passes.

Usage: benchmarks/cubek_blocks.py [--model resnet18|resnet50] [--stem cifar|imagenet]
                                  [--batch 256] [--image 32] [--sms 132] [--dtype f32|bf16]
                                  [--json]
"""

import argparse
import json
import math
import sys

WARP = 32
MAX_THREADS = 1024
LOAD_BITS = 128
STAGE_K = 32


def out_size(size, k, s, p):
    return (size + 2 * p - k) // s + 1


def resnet_convs(model, stem, image, width=64):
    """Every convolution of the model as (name, c_in, c_out, kernel, stride, pad, in_hw)."""
    blocks, bottleneck = {
        "resnet18": ([2, 2, 2, 2], False),
        "resnet34": ([3, 4, 6, 3], False),
        "resnet50": ([3, 4, 6, 3], True),
        "resnet101": ([3, 4, 23, 3], True),
        "resnet152": ([3, 8, 36, 3], True),
    }[model]
    convs = []
    if stem == "cifar":
        convs.append(("stem", 3, width, 3, 1, 1, image))
        hw = image
    else:
        convs.append(("stem", 3, width, 7, 2, 3, image))
        hw = out_size(out_size(image, 7, 2, 3), 3, 2, 1)
    expansion = 4 if bottleneck else 1
    c = width
    for li, n_blocks in enumerate(blocks):
        planes = width * 2**li
        for b in range(n_blocks):
            stride = 2 if (li > 0 and b == 0) else 1
            name = f"layer{li + 1}.{b}"
            out_hw = out_size(hw, 3, stride, 1)
            if bottleneck:
                convs.append((f"{name}.conv1", c, planes, 1, 1, 0, hw))
                convs.append((f"{name}.conv2", planes, planes, 3, stride, 1, hw))
                convs.append((f"{name}.conv3", planes, planes * 4, 1, 1, 0, out_hw))
            else:
                convs.append((f"{name}.conv1", c, planes, 3, stride, 1, hw))
                convs.append((f"{name}.conv2", planes, planes, 3, 1, 1, out_hw))
            if stride != 1 or c != planes * expansion:
                convs.append((f"{name}.downsample", c, planes * expansion, 1, stride, 0, hw))
            c = planes * expansion
            hw = out_hw
    return convs


def tile(dtype, m, n):
    if dtype == "f32":
        return (16, 16, 8)  # tf32 cmma
    if m >= 4 * n:
        return (32, 8, 16)
    if n >= 4 * m:
        return (8, 32, 16)
    return (16, 16, 16)


def grid(dtype, m, n, k, padded_n=None, padded_k=None):
    """(blocks, threads per block, k steps per block) of one implicit-GEMM launch."""
    tm, tn, _ = tile(dtype, m, n)
    precision = 2 if dtype == "f32" else 1
    tile_factor = math.ceil(tn / 4)
    if m <= 4 * tm or n <= 4 * tn:
        tile_factor = 8
    planes = (MAX_THREADS // WARP) // (tile_factor * precision)
    bm, bn = planes * tm, planes * tn
    n = padded_n or n
    k = padded_k or k
    return math.ceil(m / bm) * math.ceil(n / bn), planes * WARP, math.ceil(k / STAGE_K)


def passes(conv, batch, dtype):
    _, cin, cout, ks, s, p, hw = conv
    ohw = out_size(hw, ks, s, p)
    align = LOAD_BITS // (32 if dtype == "f32" else 16)
    cin_pad = math.ceil(cin / align) * align
    cout_pad = math.ceil(cout / align) * align
    taps = ks * ks
    # `gemm` sends a strided input gradient to Burn's transposed convolution instead.
    dgrad = None if s != 1 else grid(dtype, batch * hw * hw, cin, cout * taps, padded_k=cout_pad * taps)
    return {
        "forward": grid(dtype, batch * ohw * ohw, cout, cin * taps, padded_k=cin_pad * taps),
        "input-grad": dgrad,
        "weight-grad": grid(dtype, cout, cin * taps, batch * ohw * ohw, padded_n=cin_pad * taps),
    }


def table(args):
    rows = []
    for conv in resnet_convs(args.model, args.stem, args.image):
        name, cin, cout, ks, s, _, hw = conv
        row = {"conv": name, "shape": f"{ks}x{ks}{' s2' if s == 2 else ''}, {cin}->{cout}, {hw}x{hw}"}
        for pass_name, g in passes(conv, args.batch, args.dtype).items():
            row[pass_name] = g and {"blocks": g[0], "threads": g[1], "k_steps": g[2]}
        rows.append(row)
    return rows


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="resnet18",
                    choices=["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"])
    ap.add_argument("--stem", default="cifar", choices=["cifar", "imagenet"])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--image", type=int, default=32)
    ap.add_argument("--sms", type=int, default=132, help="streaming multiprocessors (H100/H200: 132)")
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    for name in ("batch", "image", "sms"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.stem == "imagenet" and args.image < 32 or args.image < 8:
        ap.error(f"--image {args.image} is too small for the {args.stem} stem's downsampling")
    rows = table(args)
    if args.json:
        few, steps = serial_weight_grad_steps(rows, args.sms)
        print(json.dumps({"convs": rows, "short_weight_grads": few, "serial_k_steps": steps}, indent=1))
        return 0
    print(f"{args.model}, {args.stem} stem, batch {args.batch}, {args.image}x{args.image}, "
          f"{args.dtype}: blocks x threads (k steps per block); {args.sms} SMs")
    print("| conv | shape | forward | input grad | weight grad |")
    print("|---|---|---|---|---|")
    for r in rows:
        cells = []
        for p in ("forward", "input-grad", "weight-grad"):
            g = r[p]
            if g is None:
                cells.append("transposed conv (fallback)")
                continue
            flag = " **<SMs**" if g["blocks"] < args.sms else ""
            cells.append(f"{g['blocks']} x {g['threads']} ({g['k_steps']}){flag}")
        print(f"| {r['conv']} | {r['shape']} | " + " | ".join(cells) + " |")
    few, steps = serial_weight_grad_steps(rows, args.sms)
    print(f"\nweight gradients with fewer blocks than SMs: {few} of {len(rows)}; "
          f"k steps they run one after another (each such launch is one wave): {steps}")
    return 0


def serial_weight_grad_steps(rows, sms):
    """Weight-gradient launches that cannot fill the GPU, and the sum of their k steps: with
    fewer blocks than SMs a launch lasts as long as one block's walk through k."""
    short = [r["weight-grad"] for r in rows if r["weight-grad"]["blocks"] < sms]
    return len(short), sum(g["k_steps"] for g in short)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
