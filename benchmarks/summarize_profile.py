#!/usr/bin/env python3
"""Top kernels of a cubecl device-time profile (`RESNET_CUDA_PROFILE=FILE resnet bench ...`).

cubecl writes one line per kernel launch, `| <duration> | <kernel name>`, with the duration in
Rust's Debug format (`812.4µs`, `1.2ms`, `950ns`, `1.5s`). This sums them per kernel name and
prints the kernels that take the most device time per training step.

    python3 benchmarks/summarize_profile.py gpu-check/logs/profile-r18.log --steps 3
    python3 benchmarks/summarize_profile.py FILE --steps 3 --top 20 --json
"""
import argparse
import json
import re
import sys
from collections import defaultdict

LINE = re.compile(r"^\|\s*([0-9.]+)(ns|µs|us|ms|s)\s*\|\s*(.+?)\s*$")
SCALE_MS = {"ns": 1e-6, "µs": 1e-3, "us": 1e-3, "ms": 1.0, "s": 1e3}


def parse(lines):
    """Per kernel name: [launches, total milliseconds]."""
    per = defaultdict(lambda: [0, 0.0])
    for line in lines:
        m = LINE.match(line)
        if not m:
            continue
        value, unit, name = m.groups()
        per[name][0] += 1
        per[name][1] += float(value) * SCALE_MS[unit]
    return per


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("log")
    p.add_argument("--steps", type=int, default=1, help="training steps the profile covers")
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--json", action="store_true", help="one JSON line instead of a table")
    a = p.parse_args()
    if a.steps < 1:
        sys.exit("--steps must be at least 1")
    try:
        with open(a.log, encoding="utf-8", errors="replace") as f:
            per = parse(f)
    except OSError as e:
        sys.exit(f"{a.log}: {e}")
    if not per:
        sys.exit(f"{a.log}: no kernel timings (lines like '| 812.4µs | name')")
    total = sum(ms for _, ms in per.values()) / a.steps
    rows = sorted(per.items(), key=lambda kv: -kv[1][1])[: a.top]
    top = [
        {
            "kernel": name[:200],
            "ms_per_step": round(ms / a.steps, 4),
            "launches_per_step": round(n / a.steps, 2),
            "share": round(ms / a.steps / total, 4),
        }
        for name, (n, ms) in rows
    ]
    if a.json:
        print(json.dumps({"device_ms_per_step": round(total, 3), "kernels": len(per), "top": top}))
        return
    print(f"device time per step: {total:.2f} ms over {len(per)} kernels")
    print(f"{'ms/step':>9} {'share':>6} {'launches':>8}  kernel")
    for r in top:
        print(f"{r['ms_per_step']:9.3f} {r['share']:6.1%} {r['launches_per_step']:8.1f}  {r['kernel'][:110]}")


if __name__ == "__main__":
    main()
