#!/usr/bin/env bash
# Checks the files for users' deployments without a container engine:
# docker-compose.yml against the Compose specification's schema, the read
# API's OpenAPI file, and the Kubernetes manifests and Prometheus config as
# well-formed YAML.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=target/tools-venv
if [ ! -x "$VENV/bin/openapi-spec-validator" ]; then
  echo "check-deploy: installing check-jsonschema and openapi-spec-validator into $VENV ..."
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check check-jsonschema openapi-spec-validator pyyaml
fi
"$VENV/bin/check-jsonschema" --builtin-schema vendor.compose-spec docker-compose.yml
"$VENV/bin/openapi-spec-validator" docs/openapi.yaml
"$VENV/bin/python" - <<'PY'
import sys, yaml
for path in ["deploy/kubernetes/hotlead.yaml", "deploy/prometheus/prometheus.yml"]:
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    for d in docs:
        if path.endswith("hotlead.yaml") and not {"apiVersion", "kind", "metadata"} <= d.keys():
            sys.exit(f"{path}: a manifest lacks apiVersion, kind or metadata")
    print(f"ok -- {path}: {len(docs)} document(s)")
PY
