#!/usr/bin/env python3
"""Checks that every --flag a rendered manifest passes to one of our binaries appears in that
binary's --help, so the manifests cannot drift from the CLI. Usage: check_flags.py BIN_DIR FILE"""

import os
import re
import subprocess
import sys

import yaml

bin_dir, manifest = sys.argv[1], sys.argv[2]
helps, bad, seen = {}, [], 0
for doc in yaml.safe_load_all(open(manifest)):
    if not doc or doc.get("kind") not in ("Job", "Deployment", "StatefulSet"):
        continue
    for c in doc["spec"]["template"]["spec"]["containers"]:
        binary = c["command"][0]
        if binary not in helps:
            out = subprocess.run([os.path.join(bin_dir, binary), "--help"], capture_output=True,
                                 text=True, check=True).stdout
            helps[binary] = set(re.findall(r"--[a-z0-9-]+", out))
        for arg in c.get("args", []):
            flag = arg.split("=", 1)[0]
            seen += 1
            if flag.startswith("--") and flag not in helps[binary]:
                bad.append(f"{doc['metadata']['name']}: {binary} has no flag {flag}")
for b in bad:
    print(f"FAIL {b}")
print(f"{manifest}: {seen} arguments checked against --help, {len(bad)} unknown")
sys.exit(1 if bad else 0)
