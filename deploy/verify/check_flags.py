#!/usr/bin/env python3
"""Checks that every --flag a rendered manifest passes to one of our binaries appears in that
binary's --help, so the manifests cannot drift from the CLI; that every Job's podFailurePolicy
uses the binary's exit codes as its --help lists them (usage and divergence fail the Job, an
interruption with saved state is retried without counting); and that the coordinator restarts
with --resume=auto. Usage: check_flags.py BIN_DIR FILE"""

import os
import re
import subprocess
import sys

import yaml

bin_dir, manifest = sys.argv[1], sys.argv[2]
helps, codes, bad, seen = {}, {}, [], 0


def exit_codes(help_text):
    """{code: meaning} from the "Exit codes:" section of a --help."""
    section = help_text.split("Exit codes:", 1)
    if len(section) < 2:
        return {}
    return {int(m.group(1)): m.group(2) for m in re.finditer(r"^\s+(\d+)\s+(.+)$", section[1], re.M)}


def check_policy(job, container, codes):
    """Problems with a Job's podFailurePolicy, given the binary's exit codes."""
    if not codes:
        return ["the binary's --help lists no exit codes"]
    spec = job["spec"]
    policy = spec.get("podFailurePolicy")
    if not policy:
        return ["no podFailurePolicy"]
    problems = []
    if spec["template"]["spec"].get("restartPolicy") != "Never":
        problems.append("podFailurePolicy needs restartPolicy: Never")
    by_action = {}
    for rule in policy["rules"]:
        on = rule.get("onExitCodes")
        if on:
            if on.get("containerName") != container or on.get("operator") != "In":
                problems.append(f"rule {rule} must name container {container} with operator In")
            by_action.setdefault(rule["action"], set()).update(on["values"])
    want_fail = {c for c, m in codes.items() if m.startswith(("usage", "training diverged"))}
    want_ignore = {c for c, m in codes.items() if m.startswith("interrupted")}
    if by_action.get("FailJob", set()) != want_fail:
        problems.append(f"FailJob exit codes {sorted(by_action.get('FailJob', []))}, the binary's "
                        f"do-not-retry codes are {sorted(want_fail)}")
    if by_action.get("Ignore", set()) != want_ignore:
        problems.append(f"Ignore exit codes {sorted(by_action.get('Ignore', []))}, the binary's "
                        f"interrupted-and-saved codes are {sorted(want_ignore)}")
    if not any(c.get("type") == "DisruptionTarget"
               for r in policy["rules"] if r["action"] == "Ignore"
               for c in r.get("onPodConditions", [])):
        problems.append("evicted/preempted pods (DisruptionTarget) should not count as failures")
    return problems


for doc in yaml.safe_load_all(open(manifest)):
    if not doc or doc.get("kind") not in ("Job", "Deployment", "StatefulSet"):
        continue
    for c in doc["spec"]["template"]["spec"]["containers"]:
        # The image's entrypoint is tini; the binary is the first argument.
        if c.get("command"):
            bad.append(f"{doc['metadata']['name']}: a command replaces the image's tini entrypoint; "
                       "name the binary as the first argument instead")
            continue
        binary, *flags = c["args"]
        if binary not in helps:
            out = subprocess.run([os.path.join(bin_dir, binary), "--help"], capture_output=True,
                                 text=True, check=True).stdout
            helps[binary] = set(re.findall(r"--[a-z0-9-]+", out))
            codes[binary] = exit_codes(out)
        for arg in flags:
            flag = arg.split("=", 1)[0]
            seen += 1
            if flag.startswith("--") and flag not in helps[binary]:
                bad.append(f"{doc['metadata']['name']}: {binary} has no flag {flag}")
        name = doc["metadata"]["name"]
        if binary == "coordinator" and "--resume=auto" not in flags:
            bad.append(f"{name}: the coordinator must restart with --resume=auto")
        if doc["kind"] == "Job":
            bad.extend(f"{name}: {p}" for p in check_policy(doc, c["name"], codes[binary]))
for b in bad:
    print(f"FAIL {b}")
print(f"{manifest}: {seen} arguments and the podFailurePolicy exit codes checked against "
      f"--help, {len(bad)} problem(s)")
sys.exit(1 if bad else 0)
