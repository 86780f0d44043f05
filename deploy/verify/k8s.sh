#!/usr/bin/env bash
# Renders every kustomize overlay, validates the output against the Kubernetes $K8S_VERSION
# schemas (kubernetes-validate, offline, strict: unknown fields are errors), and checks that
# every flag the manifests pass to `coordinator`/`worker` exists in that binary's --help, and that
# every shipped run.toml is a valid run configuration. JobSets (overlays/jobset-gpu) are checked
# by check_jobset.py against the schema vendored in schemas/.
#
#   BIN_DIR=target/debug deploy/verify/k8s.sh
#
# Needs kubectl (for `kubectl kustomize`), kubernetes-validate (pip) and the built binaries.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN_DIR=${BIN_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/debug}
K8S_VERSION=${K8S_VERSION:-1.32.0}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
for tool in kubectl kubernetes-validate python3; do
  command -v "$tool" >/dev/null || { echo "k8s.sh: '$tool' not found" >&2; exit 2; }
done
for overlay in "$ROOT"/deploy/k8s/overlays/*/; do
  name=$(basename "$overlay")
  echo "== $name"
  kubectl kustomize "$overlay" >"$WORK/$name.yaml"
  kubernetes-validate --kubernetes-version "$K8S_VERSION" --strict --quiet "$WORK/$name.yaml"
  python3 "$ROOT/deploy/verify/check_flags.py" "$BIN_DIR" "$WORK/$name.yaml"
  # kubernetes-validate only warns about kinds it has no schema for: JobSets get their own check
  # (vendored schema + each replicated Job as a batch/v1 Job), then their Jobs the flag check.
  if grep -q '^kind: JobSet$' "$WORK/$name.yaml"; then
    python3 "$ROOT/deploy/verify/check_jobset.py" "$K8S_VERSION" "$WORK/$name.yaml" \
      --jobs-out "$WORK/$name.jobs.yaml" --self-test
    python3 "$ROOT/deploy/verify/check_flags.py" "$BIN_DIR" "$WORK/$name.jobs.yaml"
  fi
done
# Every run.toml the manifests ship must be a valid run configuration: the coordinator loads and
# validates it, then gives up waiting for workers after a second.
for toml in $(find "$ROOT/deploy/k8s" -name run.toml); do
  out=$("$BIN_DIR/coordinator" --config "$toml" --listen 127.0.0.1:0 --join-timeout 1 2>&1 || true)
  grep -q "rendezvous timed out" <<<"$out" || { echo "FAIL $toml: $out"; exit 1; }
  echo "$toml: valid run configuration"
done
echo "k8s check: every overlay renders, validates against Kubernetes $K8S_VERSION (JobSets against the vendored schema) and uses only real flags"
