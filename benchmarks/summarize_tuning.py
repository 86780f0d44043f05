#!/usr/bin/env python3
"""What `--cuda-conv tuned` chose, per convolution shape, from cubecl's autotune log.

With `RESNET_CUDA_LOG=FILE`, cubecl logs each tuning as a line
`Fastest result <candidate>-<key>. Context: ...` followed by one line per candidate: its
timings (`Autotune[i] name <candidate> => BenchmarkComputations { mean: .., median: .., .. }`)
or why it did not run (`Unknown { name: .., err: .. }`, `InvalidSamples { .. }`, `Skip { .. }`).
This keeps the tunings of this project's convolution passes (keys starting with `forward`,
`input-grad` or `weight-grad`, see crates/kernels/src/conv/tune_plan.rs) and prints, per key,
every candidate's median time and the winner, then per pass the summed medians of the
winners against `gemm`'s (summed over distinct shapes, not weighted by how often a shape
occurs in the model).

    python3 benchmarks/summarize_tuning.py gpu-check/logs/kernels-tuned.log
    python3 benchmarks/summarize_tuning.py FILE --json
"""
import argparse
import json
import re
import sys

PASSES = ("forward", "input-grad", "weight-grad")
FASTEST = re.compile(r"^Fastest result (\S+?)-((?:%s) [^.]*)\. " % "|".join(PASSES))
TIMED = re.compile(r"^Autotune\[\d+\] name (\S+) => BenchmarkComputations \{.*?median: ([0-9.]+)(ns|µs|us|ms|s)")
FAILED = re.compile(r'^(\w+) \{ name: "([^"]+)"(?:, err: "(.*)")? \}')
SCALE_US = {"ns": 1e-3, "µs": 1.0, "us": 1.0, "ms": 1e3, "s": 1e6}


def parse(lines):
    """A list of {key, pass, fastest, candidates: {name: median µs or "Error: why"}}."""
    tunings, cur = [], None
    for line in lines:
        line = line.rstrip("\n")
        m = FASTEST.match(line)
        if m:
            cur = {"key": m.group(2), "pass": m.group(2).split(" ")[0], "fastest": m.group(1),
                   "candidates": {}}
            tunings.append(cur)
            continue
        if cur is None:
            continue
        m = TIMED.match(line)
        if m:
            name, value, unit = m.groups()
            cur["candidates"][name] = round(float(value) * SCALE_US[unit], 3)
            continue
        m = FAILED.match(line)
        if m:
            kind, name, why = m.groups()
            cur["candidates"][name] = f"{kind}: {why}" if why else kind
            continue
        if line.startswith(("Fastest result", "[Compiling")):
            cur = None  # another tuning, or a compilation: this tuning's list is over
    return tunings


def per_pass(tunings):
    out = {}
    for p in PASSES:
        rows = [t for t in tunings if t["pass"] == p]
        chosen = sum(t["candidates"].get(t["fastest"], 0) for t in rows
                     if isinstance(t["candidates"].get(t["fastest"]), float))
        gemm_rows = [t for t in rows if isinstance(t["candidates"].get("gemm"), float)]
        out[p] = {
            "shapes": len(rows),
            "chosen_us": round(chosen, 1),
            "gemm_shapes": len(gemm_rows),
            "gemm_us_where_it_ran": round(sum(t["candidates"]["gemm"] for t in gemm_rows), 1),
            "chosen_us_where_gemm_ran": round(
                sum(t["candidates"][t["fastest"]] for t in gemm_rows), 1),
            "winners": sorted({t["fastest"] for t in rows}),
        }
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("log")
    p.add_argument("--json", action="store_true", help="one JSON line instead of a table")
    a = p.parse_args()
    try:
        with open(a.log, encoding="utf-8", errors="replace") as f:
            tunings = parse(f)
    except OSError as e:
        print(f"{a.log}: {e.strerror}", file=sys.stderr)
        return 1
    if not tunings:
        print(f"{a.log}: no tunings of forward/input-grad/weight-grad found", file=sys.stderr)
        return 1
    summary = per_pass(tunings)
    if a.json:
        print(json.dumps({"tunings": tunings, "per_pass": summary}))
        return 0
    for t in tunings:
        print(t["key"])
        for name, v in t["candidates"].items():
            mark = "*" if name == t["fastest"] else " "
            shown = f"{v:10.1f} µs" if isinstance(v, float) else v
            print(f"  {mark} {name:20} {shown}")
    for pname, s in summary.items():
        print(f"{pname}: {s['shapes']} shapes, chosen {s['chosen_us']} µs; where gemm ran "
              f"({s['gemm_shapes']}): gemm {s['gemm_us_where_it_ran']} µs, chosen "
              f"{s['chosen_us_where_gemm_ran']} µs; winners {', '.join(s['winners'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
