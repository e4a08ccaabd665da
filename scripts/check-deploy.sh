#!/usr/bin/env bash
# Checks the files for users' deployments offline, without a container
# engine or a cluster, printing one `ok -- ...` line per check:
#   - docker-compose.yml against the Compose specification's schema, and its
#     Prometheus and Grafana mounts against the files they name;
#   - the read API's OpenAPI file;
#   - the Prometheus configuration, alert rules and the rules' unit tests,
#     with promtool (scripts/setup.sh installs it);
#   - the Grafana dashboard and its provisioning files;
#   - that every metric the dashboard, the alerts and their tests name is
#     declared in src/telemetry.rs;
#   - the Kubernetes kustomization, rendered (`kubectl kustomize`, else
#     `kustomize build`, else a small renderer below) and each resource
#     validated against the Kubernetes schemas, the ServiceMonitor against
#     deploy/kubernetes/schemas/;
#   - that neither Compose nor Kubernetes serves the read API beyond loopback
#     without a token (what `hotlead run` refuses), unless told to.
# Its Python tools are installed into target/tools-venv, once per version set.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=target/tools-venv
TOOLS="check-jsonschema==0.39.0 openapi-spec-validator==0.9.0 jsonschema==4.26.0 pyyaml==6.0.3 kubernetes-validate==1.37.0"
if [ "$(cat "$VENV/.tools" 2>/dev/null)" != "$TOOLS" ]; then
  echo "check-deploy: installing $TOOLS into $VENV ..."
  python3 -m venv "$VENV"
  # shellcheck disable=SC2086 # one argument per requirement
  "$VENV/bin/pip" install --quiet --disable-pip-version-check $TOOLS
  echo "$TOOLS" >"$VENV/.tools"
fi

PROMTOOL="$(command -v promtool || echo target/tools/bin/promtool)"
if [ ! -x "$PROMTOOL" ]; then
  echo "check-deploy: promtool is missing; scripts/setup.sh installs it" >&2
  exit 1
fi

# Runs a command quietly; prints `ok -- WHAT`, or its output and fails.
check() {
  local what=$1 out
  shift
  if out=$("$@" 2>&1); then
    echo "ok -- $what"
  else
    echo "$out" >&2
    echo "FAILED -- $what" >&2
    exit 1
  fi
}

check "docker-compose.yml: Compose specification schema" \
  "$VENV/bin/check-jsonschema" --builtin-schema vendor.compose-spec docker-compose.yml
check "docs/openapi.yaml: OpenAPI specification" \
  "$VENV/bin/openapi-spec-validator" docs/openapi.yaml
check "deploy/prometheus/alerts.yml: promtool check rules" \
  "$PROMTOOL" check rules deploy/prometheus/alerts.yml
check "deploy/prometheus/alerts.test.yml: promtool test rules" \
  "$PROMTOOL" test rules deploy/prometheus/alerts.test.yml
check "deploy/prometheus/prometheus.yml: promtool check config" \
  "$PROMTOOL" check config deploy/prometheus/prometheus.yml

OUT=target/deploy-check
mkdir -p "$OUT"
RENDERED="$OUT/kubernetes.yaml"
if command -v kubectl >/dev/null 2>&1; then
  check "deploy/kubernetes: kubectl kustomize" sh -c "kubectl kustomize deploy/kubernetes >'$RENDERED'"
elif command -v kustomize >/dev/null 2>&1; then
  check "deploy/kubernetes: kustomize build" sh -c "kustomize build deploy/kubernetes >'$RENDERED'"
else
  rm -f "$RENDERED"
fi

RENDERED="$RENDERED" "$VENV/bin/python" - <<'PY'
import json, os, re, sys
import yaml

def fail(message):
    sys.exit(f"FAILED -- {message}")

def ok(message):
    print(f"ok -- {message}")

def load_yaml(path):
    with open(path) as f:
        return yaml.safe_load(f)

# --- Metric names declared in src/telemetry.rs -------------------------------
telemetry = open("src/telemetry.rs").read()
consts = dict(re.findall(r'pub const (\w+): &str = "(hotlead_\w+)";', telemetry))
if not consts:
    fail("src/telemetry.rs: no metric name constants found")
histograms = {consts[c] for c in re.findall(r'histogram!\(\s*(\w+)', telemetry) if c in consts}
series_names = {n for n in consts.values() if n not in histograms}
series_names |= {h + s for h in histograms for s in ("_bucket", "_sum", "_count")}
series_names.add("up")  # Prometheus's own, per scrape target

KEYWORDS = {"and", "or", "unless", "offset", "bool", "by", "without", "on", "ignoring",
            "group_left", "group_right", "inf", "nan", "Inf", "NaN"}

def metric_names(expr):
    """The metric names a PromQL expression (Grafana variables allowed) selects."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    e = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", e)
    e = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    e = re.sub(r"\$\w+", " ", e)
    names = set()
    for m in re.finditer(r"(?<![\w:.])[A-Za-z_:][\w:]*", e):
        if m.group(0) in KEYWORDS or e[m.end():].lstrip().startswith("("):
            continue
        names.add(m.group(0))
    return names

def check_names(origin, exprs):
    unknown = set()
    for expr in exprs:
        unknown |= metric_names(expr) - series_names
    if unknown:
        fail(f"{origin}: metrics not declared in src/telemetry.rs: {', '.join(sorted(unknown))}")

# --- Prometheus alert rules and their tests -----------------------------------
rules = [r for g in load_yaml("deploy/prometheus/alerts.yml")["groups"] for r in g["rules"]]
for r in rules:
    if r.get("labels", {}).get("severity") not in ("critical", "warning"):
        fail(f"alert {r['alert']}: severity label must be critical or warning")
    if not {"summary", "description"} <= set(r.get("annotations", {})):
        fail(f"alert {r['alert']}: needs summary and description annotations")
check_names("deploy/prometheus/alerts.yml", [r["expr"] for r in rules])
tests = load_yaml("deploy/prometheus/alerts.test.yml")["tests"]
check_names("deploy/prometheus/alerts.test.yml",
            [s["series"].split("{")[0] for t in tests for s in t["input_series"]])
alerts = {r["alert"] for r in rules}
fired = {c["alertname"] for t in tests for c in t.get("alert_rule_test", []) if c.get("exp_alerts")}
quiet = {c["alertname"] for t in tests for c in t.get("alert_rule_test", []) if not c.get("exp_alerts")}
if alerts - fired or alerts - quiet:
    fail("deploy/prometheus/alerts.test.yml: every alert needs a firing and a not-firing case; missing: "
         + ", ".join(sorted((alerts - fired) | (alerts - quiet))))
ok(f"deploy/prometheus: {len(rules)} alerts with severity and annotations, each tested firing and quiet, "
   "metrics declared in src/telemetry.rs")

# --- Grafana dashboard and provisioning ---------------------------------------
path = "deploy/grafana/dashboards/hotlead.json"
try:
    dashboard = json.load(open(path))
except json.JSONDecodeError as e:
    fail(f"{path}: not JSON: {e}")
for key in ("uid", "title", "panels", "templating", "schemaVersion"):
    if key not in dashboard:
        fail(f"{path}: no `{key}`")
if not isinstance(dashboard["schemaVersion"], int) or dashboard["schemaVersion"] < 36:
    fail(f"{path}: schemaVersion {dashboard['schemaVersion']!r} is older than Grafana 9")
variables = {v["name"]: v for v in dashboard["templating"]["list"]}
if variables.get("datasource", {}).get("type") != "datasource" or variables["datasource"].get("query") != "prometheus":
    fail(f"{path}: needs a `datasource` variable of type datasource for Prometheus")
known_vars = set(variables) | {"__rate_interval", "__interval", "__range"}
exprs, ids, cells = [], set(), set()
for p in dashboard["panels"]:
    where = f"{path}: panel {p.get('id')} ({p.get('title')!r})"
    if not isinstance(p.get("id"), int) or p["id"] in ids:
        fail(f"{where}: ids must be unique integers")
    ids.add(p["id"])
    g = p.get("gridPos", {})
    if not all(isinstance(g.get(k), int) for k in "hwxy") or g["x"] < 0 or g["x"] + g["w"] > 24:
        fail(f"{where}: gridPos must hold integers h, w, x, y within 24 columns")
    for x in range(g["x"], g["x"] + g["w"]):
        for y in range(g["y"], g["y"] + g["h"]):
            if (x, y) in cells:
                fail(f"{where}: overlaps another panel")
            cells.add((x, y))
    if p.get("type") == "row":
        continue
    if p.get("datasource") != {"type": "prometheus", "uid": "${datasource}"}:
        fail(f"{where}: must query the `datasource` variable")
    targets = p.get("targets") or fail(f"{where}: no queries")
    if len({t.get("refId") for t in targets}) != len(targets):
        fail(f"{where}: refIds must be unique")
    for t in targets:
        if not t.get("expr"):
            fail(f"{where}: a query has no expr")
        exprs.append(t["expr"])
exprs += [a["expr"] for a in dashboard.get("annotations", {}).get("list", []) if a.get("expr")]
for v in variables.values():
    q = v.get("query")
    q = q.get("query") if isinstance(q, dict) else q
    if v.get("type") == "query":
        m = re.match(r"label_values\((.*),\s*\w+\)$", q or "") or fail(f"{path}: variable {v['name']}: expected label_values(...)")
        exprs.append(m.group(1))
for expr in exprs:
    for var in re.findall(r"\$\{?(\w+)", expr):
        if var not in known_vars:
            fail(f"{path}: `${var}` is not a dashboard variable: {expr}")
check_names(path, exprs)
shown = {n for e in exprs for n in metric_names(e)}
ok(f"{path}: {len(dashboard['panels'])} panels, {len(exprs)} queries over {len(shown)} series names, "
   "all declared in src/telemetry.rs")

datasources = load_yaml("deploy/grafana/provisioning/datasources/prometheus.yml")
if not any(d.get("type") == "prometheus" for d in datasources.get("datasources", [])):
    fail("deploy/grafana/provisioning/datasources/prometheus.yml: no Prometheus data source")
providers = load_yaml("deploy/grafana/provisioning/dashboards/hotlead.yml")["providers"]
dashboards_path = providers[0]["options"]["path"]

compose = load_yaml("docker-compose.yml")["services"]
def mounts(service):
    return {m.split(":")[1]: m.split(":")[0] for m in compose[service].get("volumes", []) if m.startswith("./")}
expected = {
    "prometheus": {"/etc/prometheus/prometheus.yml": "./deploy/prometheus/prometheus.yml",
                   "/etc/prometheus/alerts.yml": "./deploy/prometheus/alerts.yml"},
    "grafana": {"/etc/grafana/provisioning": "./deploy/grafana/provisioning",
                dashboards_path: "./deploy/grafana/dashboards"},
}
for service, want in expected.items():
    got = mounts(service)
    for target, source in want.items():
        if got.get(target) != source:
            fail(f"docker-compose.yml: {service} must mount {source} at {target}")
scrape = load_yaml("deploy/prometheus/prometheus.yml")["scrape_configs"]
targets = [t for job in scrape if job["job_name"] == "hotlead" for s in job.get("static_configs", []) for t in s["targets"]]
ports = [p.split(":")[-1] for p in compose["hotlead"].get("ports", [])]
if not any(t.split(":")[0] in compose and t.split(":")[1] in ports for t in targets):
    fail("deploy/prometheus/prometheus.yml: job hotlead must scrape the compose service hotlead on its port")
ok("deploy/grafana provisioning and docker-compose.yml: Prometheus and Grafana mount the files they load")

# --- The read API is never open beyond loopback by accident -------------------
import ipaddress

def open_beyond_loopback(listen, env, config=None):
    """Whether hotlead would serve the read API beyond loopback with no token
    and no http.allow_anonymous: what `hotlead run` refuses to start with."""
    http = (config or {}).get("http", {})
    listen = env.get("HOTLEAD_HTTP__LISTEN", http.get("listen", listen))
    if not listen:
        return False
    host = listen.rsplit(":", 1)[0].strip("[]")
    if ipaddress.ip_address(host).is_loopback:
        return False
    anonymous = str(env.get("HOTLEAD_HTTP__ALLOW_ANONYMOUS", http.get("allow_anonymous", False))).lower() == "true"
    token = "HOTLEAD_HTTP__TOKEN" in env or "HOTLEAD_HTTP__TOKEN_FILE" in env or "token" in http or "token_file" in http
    return not (anonymous or token)

dockerfile = open("Dockerfile").read()
image_listen = re.search(r"HOTLEAD_HTTP__LISTEN=(\S+)", dockerfile)
image_listen = image_listen.group(1) if image_listen else "127.0.0.1:9464"
compose_env = compose["hotlead"].get("environment", {})
if isinstance(compose_env, list):
    compose_env = dict(e.split("=", 1) for e in compose_env)
if open_beyond_loopback(image_listen, compose_env):
    fail(f"docker-compose.yml: hotlead listens on {image_listen} (Dockerfile) with no HOTLEAD_HTTP__TOKEN "
         "and no HOTLEAD_HTTP__ALLOW_ANONYMOUS: it would refuse to start")
ok("docker-compose.yml: hotlead's read API has a token or is served open on purpose")

# --- Kubernetes ----------------------------------------------------------------
import hashlib
import jsonschema
import kubernetes_validate

KUBERNETES_VERSION = "1.30"
base = "deploy/kubernetes"

def render_without_kustomize():
    """Renders the subset of kustomize this kustomization uses, for machines
    without kubectl or kustomize. Generated names get a stand-in hash."""
    k = load_yaml(f"{base}/kustomization.yaml")
    unknown = set(k) - {"apiVersion", "kind", "labels", "resources", "configMapGenerator", "images"}
    if unknown:
        fail(f"{base}/kustomization.yaml: the built-in renderer does not know {sorted(unknown)}; install kubectl")
    docs, renamed = [], {}
    for g in k.get("configMapGenerator", []):
        data = {os.path.basename(f): open(f"{base}/{f}").read() for f in g.get("files", [])}
        name = g["name"]
        if not g.get("options", {}).get("disableNameSuffixHash"):
            renamed[name] = f"{name}-{hashlib.sha256(json.dumps(data).encode()).hexdigest()[:10]}"
        docs.append({"apiVersion": "v1", "kind": "ConfigMap",
                     "metadata": {"name": renamed.get(name, name), "labels": dict(g.get("options", {}).get("labels", {}))},
                     "data": data})
    for r in k.get("resources", []):
        docs += [d for d in yaml.safe_load_all(open(f"{base}/{r}")) if d]
    images = {i["name"]: f"{i.get('newName', i['name'])}:{i['newTag']}" for i in k.get("images", [])}
    for d in docs:
        for pairs in k.get("labels", []):
            d["metadata"].setdefault("labels", {}).update(pairs["pairs"])
        pod = d.get("spec", {}).get("template", {}).get("spec", {})
        for c in pod.get("containers", []):
            c["image"] = images.get(c["image"], c["image"])
        for v in pod.get("volumes", []):
            if "configMap" in v:
                v["configMap"]["name"] = renamed.get(v["configMap"]["name"], v["configMap"]["name"])
    return docs

rendered = os.environ["RENDERED"]
if os.path.exists(rendered):
    docs = [d for d in yaml.safe_load_all(open(rendered)) if d]
else:
    docs = render_without_kustomize()
    ok(f"{base}: rendered with the built-in renderer (no kubectl or kustomize found)")

schema = json.load(open(f"{base}/schemas/servicemonitor-monitoring.coreos.com-v1.json"))
jsonschema.Draft202012Validator.check_schema(schema)
service_monitor = jsonschema.Draft202012Validator(schema)
for d in docs:
    what = f"{base}: {d.get('kind')} {d.get('metadata', {}).get('name')}"
    if d.get("kind") == "ServiceMonitor":
        errors = sorted(service_monitor.iter_errors(d), key=lambda e: list(e.path))
        if errors:
            fail(f"{what}: " + "; ".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors))
    else:
        try:
            kubernetes_validate.validate(d, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            fail(f"{what}: {'.'.join(map(str, e.path))}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            fail(f"{what}: {e.message}")
kinds = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in docs)
ok(f"{base}: {len(docs)} resources valid against Kubernetes {KUBERNETES_VERSION} schemas (strict) "
   f"and the ServiceMonitor CRD schema: {', '.join(kinds)}")

# How the resources fit together.
by_kind = {}
for d in docs:
    by_kind.setdefault(d["kind"], []).append(d)
for kind in ("Deployment", "Service", "PodDisruptionBudget", "ServiceMonitor"):
    if len(by_kind.get(kind, [])) != 1:
        fail(f"{base}: expected one {kind}")
deployment, = by_kind["Deployment"]
service, = by_kind["Service"]
pdb, = by_kind["PodDisruptionBudget"]
monitor, = by_kind["ServiceMonitor"]
pod = deployment["spec"]["template"]
pod_labels = pod["metadata"]["labels"]
def selects(selector):
    return all(pod_labels.get(k) == v for k, v in selector.items())
container, = pod["spec"]["containers"]
config_maps = {c["metadata"]["name"]: c for c in by_kind.get("ConfigMap", [])}
problems = []
if not selects(deployment["spec"]["selector"]["matchLabels"]):
    problems.append("the Deployment's selector does not match its pods")
if not selects(service["spec"]["selector"]) or not selects(pdb["spec"]["selector"]["matchLabels"]):
    problems.append("the Service or PodDisruptionBudget does not select the pods")
if not all(service["metadata"]["labels"].get(k) == v for k, v in monitor["spec"]["selector"]["matchLabels"].items()):
    problems.append("the ServiceMonitor does not select the Service")
if {e["port"] for e in monitor["spec"]["endpoints"]} - {p["name"] for p in service["spec"]["ports"]}:
    problems.append("the ServiceMonitor names a port the Service lacks")
if container.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/readyz" \
        or container.get("livenessProbe", {}).get("httpGet", {}).get("path") != "/healthz":
    problems.append("probes must be /readyz (readiness) and /healthz (liveness)")
security = {**pod["spec"].get("securityContext", {}), **container.get("securityContext", {})}
if not (security.get("runAsNonRoot") and security.get("readOnlyRootFilesystem")):
    problems.append("the container must run as non-root with a read-only root filesystem")
if not container.get("resources", {}).get("requests") or not container.get("resources", {}).get("limits"):
    problems.append("the container needs resource requests and limits")
volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
for v in volumes.values():
    if "configMap" in v and v["configMap"]["name"] not in config_maps:
        problems.append(f"volume {v['name']} names ConfigMap {v['configMap']['name']}, which is not rendered")
args = container["args"]
config_path = args[args.index("--config") + 1]
def mounted(path):
    """(ConfigMap, key, mount) behind a file path in the container."""
    for m in container["volumeMounts"]:
        if "configMap" not in volumes[m["name"]]:
            continue
        cm = config_maps.get(volumes[m["name"]]["configMap"]["name"])
        mount_path = m["mountPath"].rstrip("/")
        if m.get("subPath") and path == mount_path:
            return cm, m["subPath"], m
        if not m.get("subPath") and path.startswith(mount_path + "/"):
            return cm, path[len(mount_path) + 1:], m
    return None, None, None
cm, key, _ = mounted(config_path)
if cm is None or key not in cm.get("data", {}):
    problems.append(f"--config {config_path} is not a file of a mounted ConfigMap")
else:
    import tomllib
    rules_path = tomllib.loads(cm["data"][key])["rules"]["path"]
    rules_cm, rules_key, mount = mounted(rules_path)
    if rules_cm is None or rules_key not in rules_cm.get("data", {}):
        problems.append(f"rules.path {rules_path} is not a file of a mounted ConfigMap")
    else:
        if mount.get("subPath"):
            problems.append("the rules are mounted with subPath, which never sees ConfigMap updates")
        if re.search(r"-[a-z0-9]{10}$", rules_cm["metadata"]["name"]):
            problems.append("the rules ConfigMap has a hash suffix: a rules change would restart the pods")
        if not isinstance(yaml.safe_load(rules_cm["data"][rules_key]).get("models"), list):
            problems.append("the rules ConfigMap holds no `models` list")
    # The read API beyond loopback: its token from a Secret the pod cannot
    # start without, unless the configuration serves it open on purpose.
    config = tomllib.loads(cm["data"][key])
    env = {e["name"]: e for e in container.get("env", [])}
    plain = {n: e.get("value", "") for n, e in env.items() if "value" in e}
    token = env.get("HOTLEAD_HTTP__TOKEN", {}).get("valueFrom", {}).get("secretKeyRef")
    without_token = {**plain, **({"HOTLEAD_HTTP__TOKEN": "from a Secret"} if token and not token.get("optional") else {})}
    if open_beyond_loopback("127.0.0.1:9464", without_token, config):
        problems.append("hotlead listens beyond loopback: HOTLEAD_HTTP__TOKEN must come from a Secret "
                        "(secretKeyRef, not optional), or hotlead.toml must set http.allow_anonymous = true")
if problems:
    fail(f"{base}: " + "; ".join(problems))
ok(f"{base}: selectors, probes, security context, resources, config and rules mounts fit together; "
   "the rules ConfigMap is reloaded in place; the read API has its token from a required Secret "
   "or is served open on purpose")
PY
