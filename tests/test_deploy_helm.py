"""The Helm chart (deploy/helm/piggywatch), checked without a cluster and mostly without helm.

Values (the defaults and each example, merged the way Helm merges them) must pass
values.schema.json; the config they carry must be a configuration PiggyWatch accepts, with
every ${VAR} it needs coming from a Secret reference; templates must parse as YAML once
their actions are blanked, refer only to declared values, and hold no secret. The chart's
copy of the shipped rules must equal rules/. High availability (replicaCount > 1 on a shared
PostgreSQL state) is checked in the schema, the HA example and the template text. Where
`helm` is installed, `helm lint` and `helm template` run too, and the render-time refusals
of an HA setup that cannot work.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

import piggywatch
from piggywatch.cli import main as piggywatch_cli
from tests.support.tools import find_tool

ROOT = Path(__file__).parent.parent
CHART = ROOT / "deploy" / "helm" / "piggywatch"
TEMPLATES = CHART / "templates"
SCHEMA = json.loads((CHART / "values.schema.json").read_text())
DEFAULTS: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
SIDECAR_EXAMPLE = CHART / "examples" / "sidecar-values.yaml"
HA_EXAMPLE = CHART / "examples" / "ha-values.yaml"
UID = 10001

# Values a template may read that are optional, so values.yaml leaves them out.
OPTIONAL_VALUES = {"podDisruptionBudget.minAvailable", "podDisruptionBudget.maxUnavailable"}
ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-[^}]*)?\}")
SECRET_KEYS = {"dsn", "password", "token", "routing_key", "api_token", "webhook_url"}
LITERAL_SECRETS = [
    re.compile(r"xox[abpr]-[0-9A-Za-z-]+"),                     # Slack tokens
    re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@${}]+:[^@\s${}]+@"),  # credentials in a URL
    re.compile(r"https://[0-9a-f]{32}@[^\s]*sentry\.io"),        # a Sentry DSN
    re.compile(r"^\s*kind:\s*Secret\s*$", re.MULTILINE),         # the chart creates none
]


def coalesce(defaults: Any, override: Any) -> Any:
    """Helm's merge of user values onto chart defaults: maps merge, everything else replaces."""
    if isinstance(defaults, dict) and isinstance(override, dict):
        merged = copy.deepcopy(defaults)
        for key, value in override.items():
            merged[key] = coalesce(defaults.get(key), value) if key in defaults else value
        return merged
    return copy.deepcopy(override)


def example_values() -> list[tuple[str, dict[str, Any]]]:
    sidecar = yaml.safe_load(SIDECAR_EXAMPLE.read_text())["piggywatch"]
    ha = yaml.safe_load(HA_EXAMPLE.read_text())
    return [("values.yaml", DEFAULTS),
            ("examples/sidecar-values.yaml", coalesce(DEFAULTS, sidecar)),
            ("examples/ha-values.yaml", coalesce(DEFAULTS, ha))]


def validator() -> Any:
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    return jsonschema.Draft7Validator(SCHEMA)


@pytest.mark.parametrize(("name", "values"), example_values(), ids=lambda v: str(v)[:30])
def test_values_pass_the_schema(name: str, values: dict[str, Any]) -> None:
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
              for e in validator().iter_errors(values)]
    assert errors == [], name


def test_schema_refuses_a_literal_secret() -> None:
    check = validator()
    literal_env = coalesce(DEFAULTS, {"extraEnv": [{"name": "SMTP_PASSWORD", "value": "hunter2"}]})
    assert not check.is_valid(literal_env)
    assert not check.is_valid(coalesce(DEFAULTS, {"secretEnv": [{"name": "X", "value": "v"}]}))


@pytest.mark.parametrize(("replicas", "valid"), [
    (1, True), (2, True), (3, True), (0, False), (-1, False), ("2", False), (1.5, False)])
def test_schema_takes_one_replica_or_more(replicas: Any, valid: bool) -> None:
    # Whether the state is shared (postgresql://) is checked when the templates render.
    assert validator().is_valid(coalesce(DEFAULTS, {"replicaCount": replicas})) is valid


@pytest.mark.parametrize(("overrides", "valid"), [
    ({"podAntiAffinity": {"type": "required"}}, True),
    ({"podAntiAffinity": {"type": "none"}}, True),
    ({"podAntiAffinity": {"type": "soft"}}, False),
    ({"podAntiAffinity": {"topologyKey": ""}}, False),
    ({"podDisruptionBudget": {"minAvailable": 1}}, True),
    ({"podDisruptionBudget": {"maxUnavailable": "50%"}}, True),
    ({"podDisruptionBudget": {"minAvailable": 1, "maxUnavailable": 1}}, False),
    ({"podDisruptionBudget": {"minAvailable": -1}}, False),
])
def test_schema_checks_the_spreading_and_the_disruption_budget(
        overrides: dict[str, Any], valid: bool) -> None:
    assert validator().is_valid(coalesce(DEFAULTS, overrides)) is valid


def test_ha_example_shares_a_postgresql_state_from_a_secret() -> None:
    ha = yaml.safe_load(HA_EXAMPLE.read_text())
    values = coalesce(DEFAULTS, ha)
    assert values["replicaCount"] >= 2 and values["mode"] == "standalone"
    assert values["persistence"]["enabled"] is False
    config = yaml.safe_load(values["config"])
    reference = ENV_REFERENCE.fullmatch(config["state"])
    assert reference and not reference.group(2), "a ${VAR} the chart trusts to be postgresql://"
    assert reference.group(1) in {ref["name"] for ref in values["secretEnv"]}
    assert "ha" in config
    # The defaults stay one replica on SQLite, which the chart refuses to scale.
    assert DEFAULTS["replicaCount"] == 1
    assert yaml.safe_load(DEFAULTS["config"])["state"].startswith("sqlite:///")


@pytest.mark.parametrize(("name", "values"), example_values(), ids=lambda v: str(v)[:30])
def test_config_is_accepted_by_piggywatch_with_the_chart_rules(
        name: str, values: dict[str, Any], tmp_path: Path) -> None:
    # Lay the files out as the pod sees them: the config beside the mounted rules.
    (tmp_path / "piggywatch.yaml").write_text(values["config"])
    shutil.copytree(CHART / "rules", tmp_path / "rules")
    # Long enough for every secret's own rule (an API token has at least 16 characters).
    env = {ref["name"]: "placeholder-0123456789abcdef" for ref in values["secretEnv"]}
    env["DATABASE_URL"] = "postgresql://localhost/app"
    env["STATE_DATABASE_URL"] = "postgresql://localhost/piggywatch_state"
    result = CliRunner().invoke(piggywatch_cli,
                                ["check", "--config", str(tmp_path / "piggywatch.yaml")], env=env)
    assert result.exit_code == 0, f"{name}: {result.output}"
    assert "rules in" in result.output and " 0 rules" not in result.output


@pytest.mark.parametrize(("name", "values"), example_values(), ids=lambda v: str(v)[:30])
def test_every_variable_the_config_needs_comes_from_a_secret(
        name: str, values: dict[str, Any]) -> None:
    needed = {m.group(1) for m in ENV_REFERENCE.finditer(values["config"]) if not m.group(2)}
    used = {m.group(1) for m in ENV_REFERENCE.finditer(values["config"])}
    provided = {ref["name"] for ref in values["secretEnv"]} | {
        env["name"] for env in values["extraEnv"]}
    assert needed - provided == set(), f"{name}: unset at start, piggywatch would refuse it"
    assert {ref["name"] for ref in values["secretEnv"]} - used == set(), "unused Secret keys"


@pytest.mark.parametrize(("name", "values"), example_values(), ids=lambda v: str(v)[:30])
def test_config_holds_secrets_only_as_environment_references(
        name: str, values: dict[str, Any]) -> None:
    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in SECRET_KEYS and isinstance(value, str):
                    assert ENV_REFERENCE.fullmatch(value), f"{name}: {path}{key} is a literal"
                walk(value, f"{path}{key}.")
        elif isinstance(node, list):
            for index, item in enumerate(node):
                walk(item, f"{path}{index}.")

    walk(yaml.safe_load(values["config"]), "")


def test_listen_port_container_port_and_service_port_agree() -> None:
    listen = yaml.safe_load(DEFAULTS["config"])["server"]["listen"]
    assert listen.rsplit(":", 1)[1] == str(DEFAULTS["containerPort"]) == "9790"
    assert DEFAULTS["service"]["port"] == 9790


def test_pod_runs_locked_down_as_the_image_user() -> None:
    pod, container = DEFAULTS["podSecurityContext"], DEFAULTS["securityContext"]
    assert pod["runAsNonRoot"] and pod["runAsUser"] == UID and pod["fsGroup"] == UID
    assert container["runAsNonRoot"] and container["runAsUser"] == UID
    assert container["readOnlyRootFilesystem"] is True
    assert container["allowPrivilegeEscalation"] is False
    assert container["capabilities"]["drop"] == ["ALL"]
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert f"USER {UID}:{UID}" in dockerfile


def test_chart_carries_exactly_the_shipped_rules() -> None:
    shipped = {p.name: p.read_bytes() for p in (ROOT / "rules").glob("*.yaml")}
    copied = {p.name: p.read_bytes() for p in (CHART / "rules").glob("*.yaml")}
    assert sorted(copied) == sorted(shipped), "cp rules/*.yaml deploy/helm/piggywatch/rules/"
    stale = [name for name in shipped if shipped[name] != copied[name]]
    assert stale == [], "cp rules/*.yaml deploy/helm/piggywatch/rules/"


def test_chart_app_version_is_the_package_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["appVersion"] == piggywatch.__version__


# --- templates, without helm ---------------------------------------------------------

ACTION = re.compile(r"\{\{-?.*?-?\}\}", re.DOTALL)
COMMENT = re.compile(r"\{\{-?\s*/\*.*?\*/\s*-?\}\}", re.DOTALL)
DEFINE = re.compile(r'\{\{-?\s*define\s+"([^"]+)"\s*-?\}\}')
END = re.compile(r"\{\{-?\s*end\s*-?\}\}\s*$")


def blank_actions(text: str) -> str:
    """Drop lines that are only actions (control flow, nindented includes), stub the rest."""
    lines = []
    for line in COMMENT.sub("", text).splitlines():
        if line.strip() and not ACTION.sub("", line).strip():
            continue
        lines.append(ACTION.sub("STUB", line))
    return "\n".join(lines) + "\n"


def manifests() -> list[Path]:
    return sorted(TEMPLATES.glob("*.yaml"))


def defines() -> dict[str, str]:
    """Each named template's body: from its define to the last end before the next one."""
    found: dict[str, str] = {}
    for path in TEMPLATES.glob("*.tpl"):
        text = COMMENT.sub("", path.read_text())
        starts = list(DEFINE.finditer(text))
        for match, following in zip(starts, [*starts[1:], None], strict=True):
            body = text[match.end():following.start() if following else len(text)]
            found[match.group(1)] = END.sub("", body.rstrip())
    return found


@pytest.mark.parametrize("path", manifests(), ids=lambda p: p.name)
def test_template_is_yaml_of_a_kubernetes_object(path: Path) -> None:
    (document,) = [d for d in yaml.safe_load_all(blank_actions(path.read_text())) if d]
    assert {"apiVersion", "kind", "metadata"} <= set(document)


def test_container_probes_health_endpoints_and_reads_secrets_by_reference() -> None:
    (container,) = yaml.safe_load(blank_actions(defines()["piggywatch.sidecar"]))
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["args"] == ["run", "--config", "/etc/piggywatch/piggywatch.yaml"]
    pod_ip, advertise, *secret_env = container["env"]
    # POD_IP first: $(POD_IP) expands only in the variables after it.
    assert pod_ip == {"name": "POD_IP",
                      "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
    assert advertise == {"name": "PIGGYWATCH_HA__ADVERTISE_URL", "value": "STUB"}
    for env in secret_env:
        assert set(env) == {"name", "valueFrom"}
        assert set(env["valueFrom"]["secretKeyRef"]) == {"name", "key", "optional"}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert set(mounts) == {"/etc/piggywatch/piggywatch.yaml", "/etc/piggywatch/rules",
                           "/var/lib/piggywatch", "/tmp"}
    assert mounts["/etc/piggywatch/piggywatch.yaml"]["readOnly"] is True
    volumes = yaml.safe_load(blank_actions(defines()["piggywatch.volumes"]))
    assert {v["name"] for v in volumes} == {m["name"] for m in mounts.values()}
    (state,) = [v for v in volumes if v["name"] == "piggywatch-state"]
    assert {"emptyDir", "persistentVolumeClaim"} <= set(state)


def test_deployment_uses_the_sidecar_template_and_standalone_objects_are_optional() -> None:
    deployment = (TEMPLATES / "deployment.yaml").read_text()
    assert 'include "piggywatch.sidecar" .' in deployment
    assert 'include "piggywatch.volumes" .' in deployment
    monitor = (TEMPLATES / "servicemonitor.yaml").read_text()
    assert monitor.startswith("{{- if and .Values.serviceMonitor.enabled")
    assert "monitoring.coreos.com/v1" in monitor


SELECTOR_LABELS = re.compile(
    r'matchLabels:\n\s*\{\{- include "piggywatch\.selectorLabels" \. \| nindent (\d+) \}\}')


def test_advertised_url_is_the_pod_ip_unless_the_user_gives_one() -> None:
    helpers = defines()
    url = helpers["piggywatch.advertiseUrl"]
    assert '"%s://$(POD_IP):%d"' in url and 'ternary "https" "http"' in url
    assert '"tls"' in url and ".Values.containerPort" in url
    given = helpers["piggywatch.advertiseUrlGiven"]
    assert '"PIGGYWATCH_HA__ADVERTISE_URL"' in given and '"advertise_url"' in given
    sidecar = helpers["piggywatch.sidecar"]
    assert 'if not (include "piggywatch.advertiseUrlGiven" .)' in sidecar
    assert 'value: {{ include "piggywatch.advertiseUrl" . | quote }}' in sidecar


def test_more_than_one_replica_needs_a_postgresql_state_and_no_state_volume() -> None:
    deployment = (TEMPLATES / "deployment.yaml").read_text()
    assert deployment.splitlines()[1] == '{{- include "piggywatch.checkReplicas" . }}'
    check = defines()["piggywatch.checkReplicas"]
    assert "gt $replicas 1" in check
    assert 'regexMatch "^postgres(ql)?://" $state' in check
    assert '"PIGGYWATCH_STATE"' in check, "the override of state: counts too"
    assert check.count("fail (printf") == 2 and ".Values.persistence.enabled" in check


def test_replicas_roll_one_at_a_time_and_one_replica_is_recreated() -> None:
    (document,) = [d for d in yaml.safe_load_all(
        blank_actions((TEMPLATES / "deployment.yaml").read_text())) if d]
    # Both branches survive the blanking; the last `type` is the one-replica branch.
    strategy = document["spec"]["strategy"]
    assert strategy["type"] == "Recreate", "one process owns the SQLite state file"
    assert strategy["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    text = (TEMPLATES / "deployment.yaml").read_text()
    assert text.index("gt (int .Values.replicaCount) 1") < text.index("type: RollingUpdate")


def test_replicas_are_spread_by_pod_anti_affinity_on_the_selector_labels() -> None:
    text = (TEMPLATES / "deployment.yaml").read_text()
    (document,) = [d for d in yaml.safe_load_all(blank_actions(text)) if d]
    anti = document["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    (required,) = anti["requiredDuringSchedulingIgnoredDuringExecution"]
    (preferred,) = anti["preferredDuringSchedulingIgnoredDuringExecution"]
    assert preferred["weight"] == 100
    for term in (required, preferred["podAffinityTerm"]):
        assert term["topologyKey"] == "STUB"
        assert set(term["labelSelector"]) == {"matchLabels"}
    # The Deployment's selector and both terms: the same labels, each at its own indent.
    indents = [int(n) for n in SELECTOR_LABELS.findall(text)]
    assert indents == [6, 18, 20]
    for indent in indents[1:]:
        line = next(x for x in text.splitlines() if f"nindent {indent} }}}}" in x)
        assert len(line) - len(line.lstrip()) == indent, "the include sits where it renders"
    assert 'eq .Values.podAntiAffinity.type "required"' in text
    assert 'hasKey .Values.affinity "podAntiAffinity"' in text, "the user's own rule wins"
    assert DEFAULTS["podAntiAffinity"] == {"type": "preferred",
                                           "topologyKey": "kubernetes.io/hostname"}


def test_disruption_budget_keeps_one_replica_and_never_blocks_a_drain_of_one() -> None:
    text = (TEMPLATES / "pdb.yaml").read_text()
    (document,) = [d for d in yaml.safe_load_all(blank_actions(text)) if d]
    assert document["kind"] == "PodDisruptionBudget"
    assert document["spec"]["minAvailable"] == 1
    assert [int(n) for n in SELECTOR_LABELS.findall(text)] == [6]
    # Only with several replicas, or a budget the user sets; never in sidecar mode.
    assert ('(or (gt (int .Values.replicaCount) 1) $budget)' in text
            and '(eq .Values.mode "standalone")' in text)
    assert DEFAULTS["podDisruptionBudget"] == {"enabled": True}


def test_sidecar_example_includes_the_named_templates() -> None:
    app = (CHART / "examples" / "app-deployment.yaml").read_text()
    for name in ("piggywatch.sidecar", "piggywatch.volumes", "piggywatch.configChecksum"):
        assert f'include "{name}" (dict "Values" .Values.piggywatch "Release" .Release)' in app
        assert name in defines()
    documents = [d for d in yaml.safe_load_all(blank_actions(app)) if d]
    assert [d["kind"] for d in documents] == ["Deployment", "Service"]


def declared(path: list[str]) -> bool:
    node: Any = SCHEMA
    for part in path:
        properties = node.get("properties", {})
        if part in properties:
            node = properties[part]
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
        else:
            return False
    return True


def has_default(path: list[str]) -> bool:
    node: Any = DEFAULTS
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


VALUES_REFERENCE = re.compile(r"\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)")
# `{{- $x := .Values.a }}`; not `range $x := ...`, whose $x is an item.
VALUES_ALIAS = re.compile(r"\{\{-?\s*\$([A-Za-z_][A-Za-z0-9_]*)\s*:=\s*"
                          r"\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)\s*-?\}\}")


def value_references(text: str) -> set[str]:
    """.Values.a.b, and $x.c where a template said `$x := .Values.a` (as $x.c is .Values.a.c)."""
    text = COMMENT.sub("", text)
    references = {m.group(1) for m in VALUES_REFERENCE.finditer(text)}
    for alias in VALUES_ALIAS.finditer(text):
        name, base = alias.groups()
        references |= {base + m.group(1) for m in re.finditer(
            rf"\${name}((?:\.[A-Za-z_][A-Za-z0-9_]*)+)", text)}
    return references


def test_templates_read_only_declared_values() -> None:
    references = {r for path in TEMPLATES.iterdir() for r in value_references(path.read_text())}
    assert references
    assert ".podDisruptionBudget.minAvailable" in references, "aliases are followed"
    undeclared = sorted(r for r in references if not declared(r.strip(".").split(".")))
    assert undeclared == [], "not in values.schema.json"
    missing = sorted(r for r in references if r.strip(".") not in OPTIONAL_VALUES
                     and not has_default(r.strip(".").split(".")))
    assert missing == [], "no default in values.yaml"


def test_nothing_in_the_chart_holds_a_literal_secret() -> None:
    files = [p for p in CHART.rglob("*") if p.is_file() and p.suffix in {".yaml", ".tpl", ".txt"}]
    for path in files:
        text = path.read_text()
        for pattern in LITERAL_SECRETS:
            assert not pattern.search(text), f"{path.relative_to(ROOT)}: {pattern.pattern}"


# --- with helm, where it is installed ------------------------------------------------

def helm(*args: str) -> str:
    binary = find_tool("helm")
    if binary is None:
        pytest.skip("helm is not installed")
    result = subprocess.run([binary, *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_helm_lint() -> None:
    helm("lint", "--strict", str(CHART))


def sidecar_overrides(tmp_path: Path) -> list[str]:
    values_file = tmp_path / "sidecar.yaml"
    values_file.write_text(yaml.safe_dump(yaml.safe_load(SIDECAR_EXAMPLE.read_text())["piggywatch"]))
    return ["--values", str(values_file)]


@pytest.mark.parametrize("case", ["defaults", "everything-on", "sidecar-mode", "ha"])
def test_helm_template_renders_valid_objects(case: str, tmp_path: Path) -> None:
    overrides = {
        "defaults": [],
        "everything-on": ["--set", "serviceMonitor.enabled=true",
                          "--set", "podDisruptionBudget.maxUnavailable=1",
                          "--set", "persistence.enabled=true"],
        "sidecar-mode": sidecar_overrides(tmp_path),
        "ha": ["--values", str(HA_EXAMPLE), "--set", "podAntiAffinity.type=required"],
    }[case]
    rendered = helm("template", "demo", str(CHART), *overrides)
    documents = [d for d in yaml.safe_load_all(rendered) if d]
    kinds = {d["kind"] for d in documents}
    assert "ConfigMap" in kinds
    assert ("Deployment" in kinds) == (case != "sidecar-mode")
    # One replica: no PodDisruptionBudget unless asked for one (it could only block drains).
    assert ("PodDisruptionBudget" in kinds) == (case in {"everything-on", "ha"})
    if case == "everything-on":
        assert {"ServiceMonitor", "PersistentVolumeClaim"} <= kinds
    for deployment in (d for d in documents if d["kind"] == "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        env = {e["name"]: e for e in container["env"]}
        assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
        assert env["PIGGYWATCH_HA__ADVERTISE_URL"]["value"] == "http://$(POD_IP):9790"
        selector = deployment["spec"]["selector"]["matchLabels"]
        anti = pod["affinity"]["podAntiAffinity"]
        if case == "ha":
            assert deployment["spec"]["replicas"] == 2
            assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
            (term,) = anti["requiredDuringSchedulingIgnoredDuringExecution"]
            (pdb,) = [d for d in documents if d["kind"] == "PodDisruptionBudget"]
            assert pdb["spec"] == {"minAvailable": 1, "selector": {"matchLabels": selector}}
        else:
            assert deployment["spec"]["strategy"] == {"type": "Recreate"}
            (preferred,) = anti["preferredDuringSchedulingIgnoredDuringExecution"]
            term = preferred["podAffinityTerm"]
        assert term["topologyKey"] == "kubernetes.io/hostname"
        assert term["labelSelector"]["matchLabels"] == selector
    (rules,) = [d for d in documents if d["metadata"]["name"].endswith("-rules")]
    assert sorted(rules["data"]) == sorted(p.name for p in (ROOT / "rules").glob("*.yaml"))


def helm_fails(*args: str) -> str:
    binary = find_tool("helm")
    if binary is None:
        pytest.skip("helm is not installed")
    result = subprocess.run([binary, *args], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0, result.stdout
    return result.stderr


@pytest.mark.parametrize(("overrides", "message"), [
    (["--set", "replicaCount=2"], "`state:` in config is a sqlite: URL"),
    (["--set", "replicaCount=2", "--set-string", "config=targets: []"], "not set (SQLite"),
    (["--values", str(HA_EXAMPLE), "--set", "persistence.enabled=true"],
     "set persistence.enabled=false"),
    (["--values", str(HA_EXAMPLE), "--set", "extraEnv[0].name=PIGGYWATCH_STATE",
      "--set", "extraEnv[0].value=sqlite:///tmp/x.db"], "a sqlite: URL"),
])
def test_helm_refuses_replicas_that_cannot_share_the_state(
        overrides: list[str], message: str) -> None:
    assert message in helm_fails("template", "demo", str(CHART), *overrides)


@pytest.mark.parametrize("overrides", [
    ["--values", str(HA_EXAMPLE), "--set", "extraEnv[0].name=PIGGYWATCH_HA__ADVERTISE_URL",
     "--set", "extraEnv[0].value=http://piggywatch-0.example:9790"],
])
def test_helm_leaves_a_given_advertise_url_alone(overrides: list[str]) -> None:
    rendered = helm("template", "demo", str(CHART), *overrides)
    (deployment,) = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    urls = [e["value"] for e in container["env"] if e["name"] == "PIGGYWATCH_HA__ADVERTISE_URL"]
    assert urls == ["http://piggywatch-0.example:9790"]
