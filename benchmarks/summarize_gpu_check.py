#!/usr/bin/env python3
"""The GPU check's summary.json as Markdown, ready for benchmarks/RESULTS.md.

    python3 benchmarks/summarize_gpu_check.py gpu-check/summary.json

Prints one table row per step (status, seconds and the numbers that matter for that kind of
step), then the steady-state comparison with PyTorch for every model both sides ran.
"""
import json
import sys


def fmt(x, digits=3):
    if isinstance(x, float):
        return f"{x:,.{digits}g}" if abs(x) < 1000 else f"{x:,.0f}"
    return str(x)


def key_numbers(r):
    """The fields worth a table cell, in a fixed order, for any step's JSON result."""
    if not isinstance(r, dict):
        return ""
    keys = [
        ("images_per_sec", "images/s"), ("first_step_s", "first step s"),
        ("median_step_s", "step s"), ("phases", "fwd/bwd/opt s"), ("cuda_conv", "kernels"),
        ("cuda_optim", "optimizer"),
        ("conv_precision", "precision"), ("precision", "precision"),
        ("bit_exact", "bit-exact"), ("median_s", "median s"), ("device_bit_exact", "device bit-exact"),
        ("device_median_s", "device median s"), ("identical", "same hash"), ("host_s", "host s"),
        ("device_s", "device s"), ("device_flat_s", "device flat s"),
        ("replicas_identical", "replicas identical"), ("world", "world"),
        ("final_accuracy", "accuracy"),
        ("cudnn_losses", "cudnn losses"), ("gemm_losses", "gemm losses"),
        ("cudnn_train_accuracy", "cudnn train acc"), ("gemm_train_accuracy", "gemm train acc"),
        ("cudnn_accuracy", "cudnn test acc"), ("gemm_accuracy", "gemm test acc"),
        ("agree", "agree"),
    ]
    cells = []
    for k, label in keys:
        if k in r and r[k] is not None:
            v = r[k]
            if isinstance(v, list):
                v = "/".join(fmt(x) for x in v)
            else:
                v = fmt(v)
            cells.append(f"{label} {v}")
    if isinstance(r.get("cudnn"), dict):  # `resnet bench` with cuDNN: what ordering costs
        c = r["cudnn"]
        cells.append(f"host syncs/step {fmt(c.get('host_syncs_per_step'))} "
                     f"({fmt(c.get('host_sync_s_per_step'))} s), fallbacks {c.get('fallbacks')}")
    if r.get("optim"):  # conv-check's optimizer part: the fused update against Burn's
        cells.append(f"{r.get('optim_kernels')} optimizer vs Burn's: " + ", ".join(
            f"{o['optimizer']} {fmt(o['error'])}" for o in r["optim"]))
    if "per_pass" in r:  # the tuning summary
        for p, s in r["per_pass"].items():
            cells.append(f"{p}: {s['shapes']} shapes, chosen {s['chosen_us']} µs "
                         f"(gemm {s['gemm_us_where_it_ran']} µs where it ran), "
                         f"winners {', '.join(s['winners'])}")
    return "; ".join(cells)


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        with open(sys.argv[1], encoding="utf-8") as f:
            d = json.load(f)
    except OSError as e:
        print(f"{sys.argv[1]}: {e.strerror}", file=sys.stderr)
        return 1
    except ValueError as e:
        print(f"{sys.argv[1]}: not a gpu-check summary.json ({e})", file=sys.stderr)
        return 1
    print(f"GPU: {d.get('gpu')}; kernels: {d.get('best_kernels')}; "
          f"{d.get('total_seconds')} s in all{' (CPU dry run)' if d.get('dry_run') else ''}\n")
    print("| step | status | seconds | result |")
    print("|---|---|---|---|")
    steps = d.get("steps", [])
    for s in steps:
        if s.get("ok") is None:
            status, secs = f"skipped: {s.get('skipped', '')}", ""
        else:
            status = "ok" if s["ok"] else f"FAILED (exit {s.get('exit_code')})"
            secs = fmt(s.get("seconds", ""))
        print(f"| {s['step']} | {status} | {secs} | {key_numbers(s.get('result'))} |")
    by = {s["step"]: s.get("result") for s in steps if isinstance(s.get("result"), dict)}
    pairs = [("ResNet-18 CIFAR stem", "bench-r18-cifar", "pytorch-r18-cifar", ""),
             ("ResNet-18, fused optimizer", "bench-r18-cifar-fused-optim", "pytorch-r18-cifar",
              ""),
             ("ResNet-18, BatchNorm+add+ReLU node", "bench-r18-cifar-bn-fused",
              "pytorch-r18-cifar", ""),
             ("ResNet-18, both fused", "bench-r18-cifar-all-fused", "pytorch-r18-cifar", ""),
             ("ResNet-18 CIFAR stem, eval", "bench-r18-cifar-eval", "pytorch-r18-cifar", "-eval"),
             ("ResNet-18 eval, fused BatchNorm", "bench-r18-cifar-eval-fused", "pytorch-r18-cifar",
              "-eval"),
             ("ResNet-18, bf16 convolutions", "bench-r18-cifar-bf16", "pytorch-r18-cifar", ""),
             ("ResNet-18, bf16 channels-last", "bench-r18-cifar-bf16-nhwc", "pytorch-r18-cifar",
              ""),
             ("ResNet-18, bf16 convolutions, all fused", "bench-r18-cifar-bf16-all-fused",
              "pytorch-r18-cifar", ""),
             ("ResNet-50 ImageNet stem", "bench-r50-imagenet-stem", "pytorch-r50-imagenet", ""),
             ("ResNet-50, all fused", "bench-r50-imagenet-stem-all-fused", "pytorch-r50-imagenet",
              "")]
    rows = []
    for name, ours, theirs, mode in pairs:
        o, t = by.get(ours), by.get(theirs + "-fp32" + mode)
        if o and t and t.get("images_per_sec"):
            amp = (by.get(theirs + "-bf16-channels-last" + mode) or {}).get("images_per_sec")
            rows.append(f"| {name} | {fmt(o['images_per_sec'])} | {fmt(t['images_per_sec'])} | "
                        f"{fmt(amp) if amp else '—'} | {o['images_per_sec'] / t['images_per_sec']:.3f} |")
    if rows:
        print("\n| model (batch 256; train unless said) | ours images/s | PyTorch fp32 | PyTorch bf16 AMP | ours / fp32 |")
        print("|---|---|---|---|---|")
        print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
