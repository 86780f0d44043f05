#!/usr/bin/env python3
"""Evaluates every PromQL expression of the Grafana dashboard and of the loaded rules against a
live Prometheus, and fails if any returns no series.

Alert expressions are compared against a threshold and are empty while all is well, so for
those the *signal* is evaluated: each side of the top-level comparison that is not a number
(`up == 0` -> `up`; `a > on (job) group_left () (1.5 * b)` -> `a` and `(1.5 * b)`), after
splitting at top-level `and`/`or`/`unless`. Recording rules are evaluated as written, and every
rule must report health "ok". Dashboard variables are substituted ($job, $instance, $namespace,
$pod -> ".*", $__rate_interval -> 30s) and the template variables' label_values() queries must
return values, except those of labels only Kubernetes attaches (namespace, pod: listed as
skipped).

Panels on NVIDIA's DCGM exporter metrics (DCGM_*) are listed as skipped: there is no GPU here.

Standard library only. Usage: check_queries.py PROM_URL DASHBOARD.json [--deadline SECONDS]
"""

import json
import re
import sys
import time
import urllib.parse
import urllib.request

SUBST = {"$__rate_interval": "30s", "$__interval": "2s", "$job": ".*", "$instance": ".*",
         "$namespace": ".*", "$pod": ".*"}
# Labels only Kubernetes service discovery attaches: their variables are empty here.
K8S_LABELS = {"namespace", "pod"}
CMP = ["==", "!=", ">=", "<=", ">", "<"]
SET_OPS = ["and", "or", "unless"]
MODIFIER = re.compile(r"^\s*(bool\b|(on|ignoring|group_left|group_right)\s*\([^)]*\))\s*")


def api(base, path, params=None):
    url = f"{base}{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params, doseq=True)
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.load(r)
    if body.get("status") != "success":
        raise RuntimeError(f"{path}: {body}")
    return body["data"]


def top_level(expr):
    """Yields (index, depth, in_string) for every character of expr."""
    depth, quote = 0, None
    for i, c in enumerate(expr):
        if quote:
            if c == quote and expr[i - 1] != "\\":
                quote = None
            yield i, depth, True
            continue
        if c in "\"'`":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        yield i, depth, False


def split_set_ops(expr):
    parts, start = [], 0
    for i, depth, s in top_level(expr):
        if depth or s:
            continue
        for op in SET_OPS:
            end = i + len(op)
            if (expr[i:end] == op and (i == 0 or not expr[i - 1].isalnum() and expr[i - 1] != "_")
                    and (end >= len(expr) or not (expr[end].isalnum() or expr[end] == "_"))):
                parts.append(expr[start:i])
                start = end
    parts.append(expr[start:])
    return [p.strip() for p in parts if p.strip()]


def split_comparison(expr):
    for i, depth, s in top_level(expr):
        if depth or s:
            continue
        for op in CMP:
            if expr.startswith(op, i):
                # '=~' / '!~' never appear at depth 0; '=' alone is not a comparison.
                return expr[:i].strip(), expr[i + len(op):].strip()
    return expr.strip(), None


def signals(expr):
    out = []
    for part in split_set_ops(expr):
        while MODIFIER.match(part):
            part = MODIFIER.sub("", part, count=1)
        left, right = split_comparison(part)
        out.append(left)
        if right is not None:
            while MODIFIER.match(right):
                right = MODIFIER.sub("", right, count=1)
            try:
                float(right)
            except ValueError:
                out.append(right)
    return out


def dashboard_queries(dash):
    def walk(panels):
        for p in panels:
            yield p
            yield from walk(p.get("panels", []))

    for p in walk(dash["panels"]):
        for t in p.get("targets", []):
            expr = t["expr"]
            for k, v in SUBST.items():
                expr = expr.replace(k, v)
            yield f"panel '{p['title']}' {t['refId']}", expr


def main():
    base, dash_file = sys.argv[1].rstrip("/"), sys.argv[2]
    deadline = time.time() + (float(sys.argv[4]) if len(sys.argv) > 4 else 90)
    dash = json.load(open(dash_file))

    checks, skipped, problems = [], [], []
    for name, expr in dashboard_queries(dash):
        if "DCGM_" in expr:
            skipped.append((name, expr))
        else:
            checks.append((name, expr))
    groups = api(base, "/api/v1/rules")["groups"]
    if not groups:
        problems.append("Prometheus loaded no rule groups")
    for g in groups:
        for r in g["rules"]:
            name = f"rule '{r.get('name')}' ({g['name']})"
            if r.get("health") not in ("ok", "unknown"):
                problems.append(f"{name}: health {r.get('health')}: {r.get('lastError')}")
            if r["type"] == "alerting":
                checks += [(f"{name} signal", s) for s in signals(r["query"])]
            else:
                checks.append((name, r["query"]))
    variables = [v for v in dash["templating"]["list"] if v["type"] == "query"]
    label_of = lambda v: re.match(r"label_values\((.*),\s*(\w+)\)$", v["definition"]).group(2)
    k8s_only = [v for v in variables if label_of(v) in K8S_LABELS]
    variables = [v for v in variables if label_of(v) not in K8S_LABELS]

    while True:
        empty = []
        for name, expr in checks:
            try:
                if not api(base, "/api/v1/query", {"query": expr})["result"]:
                    empty.append(f"{name}: no series: {expr}")
            except Exception as e:  # noqa: BLE001 - report every failing query, not the first
                empty.append(f"{name}: error {e}: {expr}")
        for v in variables:
            m = re.match(r"label_values\((.*),\s*(\w+)\)$", v["definition"])
            sel, label = m.group(1), m.group(2)
            for k, val in SUBST.items():
                sel = sel.replace(k, val)
            if not api(base, f"/api/v1/label/{label}/values", {"match[]": sel}):
                empty.append(f"variable ${v['name']}: no values for {v['definition']}")
        if not empty or time.time() > deadline:
            break
        time.sleep(3)

    for name, expr in skipped:
        print(f"SKIP  {name}: needs NVIDIA's dcgm-exporter (no GPU here): {expr}")
    for v in k8s_only:
        print(f"SKIP  variable ${v['name']}: label only Kubernetes attaches: {v['definition']}")
    for p in problems + empty:
        print(f"FAIL  {p}")
    print(f"observability check: {len(checks) + len(variables) - len(empty)} queries returned data, "
          f"{len(empty)} empty, {len(problems)} rule problems, {len(skipped)} skipped (DCGM)")
    sys.exit(1 if problems or empty else 0)


if __name__ == "__main__":
    main()
