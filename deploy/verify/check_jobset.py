#!/usr/bin/env python3
"""Validates every JobSet in a rendered manifest, which kubernetes-validate cannot (it only
warns that it has no schema for the kind):
  - the JobSet level against the vendored schema (schemas/jobset-v1alpha2.json, unknown fields
    are errors);
  - each replicated Job's template as a batch/v1 Job against the Kubernetes schema (strict);
  - the references inside it: successPolicy/failurePolicy/dependsOn name existing replicated
    jobs, the workers' MASTER_ADDR is the coordinator pod's JobSet DNS name, and the
    coordinator's group size (--workers or WORLD_SIZE) equals the worker pods' number.
Writes the JobSets' replicated Jobs as a Job list to --jobs-out so check_flags.py checks their
flags and podFailurePolicy like any Job. --self-test first breaks each JobSet in ways the checks
must catch (so a check that silently passes everything fails CI).
Usage: check_jobset.py K8S_VERSION FILE [--jobs-out F] [--self-test]"""

import copy
import json
import os
import sys

import jsonschema
import kubernetes_validate.utils as kv
import yaml

version, manifest = sys.argv[1], sys.argv[2]
jobs_out = sys.argv[sys.argv.index("--jobs-out") + 1] if "--jobs-out" in sys.argv else None
schema = json.load(open(os.path.join(os.path.dirname(__file__), "schemas/jobset-v1alpha2.json")))
bad, jobs, count = [], [], 0


def arg_value(args, flag):
    for a in args:
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def env_value(container, name):
    for e in container.get("env", []):
        if e.get("name") == name:
            return e.get("value")
    return None


def check(js):
    name = js["metadata"]["name"]
    problems = [f"{'.'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
                for e in jsonschema.Draft202012Validator(schema).iter_errors(js)]
    if problems:
        return problems
    spec = js["spec"]
    names = [r["name"] for r in spec["replicatedJobs"]]
    if len(set(names)) != len(names):
        problems.append(f"replicated job names repeat: {names}")
    refs = list(spec.get("successPolicy", {}).get("targetReplicatedJobs", []))
    for rule in spec.get("failurePolicy", {}).get("rules", []):
        refs += rule.get("targetReplicatedJobs", [])
    for r in spec["replicatedJobs"]:
        refs += [d["name"] for d in r.get("dependsOn", [])]
    problems += [f"refers to replicated job '{r}', which does not exist ({names})"
                 for r in refs if r not in names]
    subdomain = spec.get("network", {}).get("subdomain", name)
    dns = spec.get("network", {}).get("enableDNSHostnames", False)
    world, pods, master = None, 0, []
    for r in spec["replicatedJobs"]:
        job = {"apiVersion": "batch/v1", "kind": "Job",
               "metadata": {**r["template"].get("metadata", {}), "name": f"{name}-{r['name']}",
                            "namespace": js["metadata"].get("namespace", "default")},
               "spec": copy.deepcopy(r["template"]["spec"])}
        try:
            kv.validate(job, version, strict=True)
        except kv.ValidationError as e:
            problems.append(f"replicatedJobs[{r['name']}].template: "
                            f"{'.'.join(map(str, e.path))}: {e.message}")
        jobs.append(job)
        for c in r["template"]["spec"]["template"]["spec"]["containers"]:
            binary, *args = c.get("args", [""])
            if binary == "coordinator":
                world = arg_value(args, "--workers") or env_value(c, "WORLD_SIZE")
                coordinator_host = f"{name}-{r['name']}-0-0.{subdomain}"
            elif binary == "worker":
                pods += r.get("replicas", 1) * r["template"]["spec"].get("parallelism", 1)
                master.append(arg_value(args, "--coordinator") or env_value(c, "MASTER_ADDR"))
    if world is None:
        problems.append("no coordinator container with --workers or WORLD_SIZE")
    elif int(world) != pods:
        problems.append(f"the coordinator waits for {world} workers, the worker Jobs start {pods}")
    for m in master:
        if world is not None and (not dns or m is None or coordinator_host not in m):
            problems.append(f"workers reach the coordinator at {m!r}; its JobSet DNS name is "
                            f"{coordinator_host} (needs network.enableDNSHostnames)")
    return problems


def mutations(js):
    """(what, broken copy) pairs, each of which check() must reject."""
    def broken(what, edit):
        m = copy.deepcopy(js)
        edit(m)
        return what, m
    rj = lambda m, i: m["spec"]["replicatedJobs"][i]
    pod = lambda m, i: rj(m, i)["template"]["spec"]["template"]["spec"]
    return [
        broken("an unknown JobSet field", lambda m: m["spec"].update(replicatedJob=[])),
        broken("an unknown field in a pod template",
               lambda m: pod(m, 0)["containers"][0].update(argz=[])),
        broken("a wrong type in a Job spec", lambda m: rj(m, 1)["template"]["spec"].update(
            completions="four")),
        broken("a success policy naming no replicated job", lambda m: m["spec"].update(
            successPolicy={"operator": "All", "targetReplicatedJobs": ["coordinatr"]})),
        broken("one worker pod fewer than the group size", lambda m: rj(m, 1)["template"][
            "spec"].update(parallelism=rj(m, 1)["template"]["spec"].get("parallelism", 1) - 1)),
        broken("workers pointed elsewhere", lambda m: [
            e.update(value="coordinator.example") for c in pod(m, 1)["containers"]
            for e in c.get("env", []) if e["name"] == "MASTER_ADDR"]),
    ]


for doc in yaml.safe_load_all(open(manifest)):
    if doc and doc.get("kind") == "JobSet":
        count += 1
        if "--self-test" in sys.argv:
            for what, m in mutations(doc):
                if not check(m):
                    bad.append(f"self-test: {what} was not caught")
            jobs.clear()
        bad += [f"JobSet {doc['metadata']['name']}: {p}" for p in check(doc)]
for b in bad:
    print(f"FAIL {b}")
if jobs_out:
    with open(jobs_out, "w") as f:
        yaml.safe_dump_all(jobs, f)
print(f"{manifest}: {count} JobSet(s) checked against the vendored JobSet schema and Kubernetes "
      f"{version}, {len(bad)} problem(s)")
sys.exit(1 if bad else 0)
