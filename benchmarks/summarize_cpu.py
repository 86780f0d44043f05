#!/usr/bin/env python3
"""Markdown table from benchmarks/run_cpu.sh's JSON lines: one row per case, our three variants
next to PyTorch, ratio = ours (default variant) / PyTorch.

    python3 benchmarks/summarize_cpu.py [benchmarks/cpu-results.jsonl]
"""
import json
import sys


def main() -> None:
    path = sys.argv[1] if len(sys.argv) > 1 else "benchmarks/cpu-results.jsonl"
    cases: dict = {}
    order = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            r = json.loads(line)
            # Older baseline lines carry no optimizer: they follow our lines of the same case.
            opt = r.get("optimizer") or (order[-1][4] if order else "sgd")
            key = (r["model"], r["stem"], r["mode"], r["batch_size"], opt)
            if key not in cases:
                cases[key] = {}
                order.append(key)
            who = r.get("variant", "pytorch") if "resnet-cluster" in r.get("framework", "") else "pytorch"
            cases[key][who] = r
    print("| case | Burn flex ops | + GEMM conv | + fused BN (default) | PyTorch | ratio | our step split |")
    print("|---|---|---|---|---|---|---|")
    for key in order:
        c = cases[key]
        model, stem, mode, batch, opt = key
        name = f"{model} {stem} {mode} b{batch}" + (f" {opt}" if mode == "train" else "")
        ips = lambda v: f"{c[v]['images_per_sec']:.1f}" if v in c else "–"
        ratio = (
            f"{c['default']['images_per_sec'] / c['pytorch']['images_per_sec']:.2f}"
            if "default" in c and "pytorch" in c
            else "–"
        )
        split = ""
        if "default" in c and c["default"].get("phases"):
            fw, bw, op = c["default"]["phases"]
            split = f"fwd {fw:.3f} / bwd {bw:.3f} / opt {op:.3f} s"
        print(f"| {name} | {ips('burn')} | {ips('gemm-conv')} | {ips('default')} | {ips('pytorch')} | {ratio} | {split} |")


if __name__ == "__main__":
    main()
