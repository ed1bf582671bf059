"""The Helm chart (deploy/helm/piggywatch), checked without a cluster and mostly without helm.

Values (the defaults and each example, merged the way Helm merges them) must pass
values.schema.json; the config they carry must be a configuration PiggyWatch accepts, with
every ${VAR} it needs coming from a Secret reference; templates must parse as YAML once
their actions are blanked, refer only to declared values, and hold no secret. The chart's
copy of the shipped rules must equal rules/. Where `helm` is installed, `helm lint` and
`helm template` run too.
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

ROOT = Path(__file__).parent.parent
CHART = ROOT / "deploy" / "helm" / "piggywatch"
TEMPLATES = CHART / "templates"
SCHEMA = json.loads((CHART / "values.schema.json").read_text())
DEFAULTS: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
SIDECAR_EXAMPLE = CHART / "examples" / "sidecar-values.yaml"
UID = 10001

# Values a template may read that are optional, so values.yaml leaves them out.
OPTIONAL_VALUES = {"podDisruptionBudget.minAvailable"}
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
    return [("values.yaml", DEFAULTS), ("examples/sidecar-values.yaml",
                                        coalesce(DEFAULTS, sidecar))]


def validator() -> Any:
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    return jsonschema.Draft7Validator(SCHEMA)


@pytest.mark.parametrize(("name", "values"), example_values(), ids=lambda v: str(v)[:30])
def test_values_pass_the_schema(name: str, values: dict[str, Any]) -> None:
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
              for e in validator().iter_errors(values)]
    assert errors == [], name


def test_schema_refuses_a_literal_secret_or_a_second_replica() -> None:
    check = validator()
    literal_env = coalesce(DEFAULTS, {"extraEnv": [{"name": "SMTP_PASSWORD", "value": "hunter2"}]})
    assert not check.is_valid(literal_env)
    assert not check.is_valid(coalesce(DEFAULTS, {"replicaCount": 2}))
    assert not check.is_valid(coalesce(DEFAULTS, {"secretEnv": [{"name": "X", "value": "v"}]}))


@pytest.mark.parametrize(("name", "values"), example_values(), ids=lambda v: str(v)[:30])
def test_config_is_accepted_by_piggywatch_with_the_chart_rules(
        name: str, values: dict[str, Any], tmp_path: Path) -> None:
    # Lay the files out as the pod sees them: the config beside the mounted rules.
    (tmp_path / "piggywatch.yaml").write_text(values["config"])
    shutil.copytree(CHART / "rules", tmp_path / "rules")
    env = {ref["name"]: "placeholder" for ref in values["secretEnv"]}
    env["DATABASE_URL"] = "postgresql://localhost/app"
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
    for env in container["env"]:
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
    assert "Recreate" in deployment, "two pods must never share the state file"
    monitor = (TEMPLATES / "servicemonitor.yaml").read_text()
    assert monitor.startswith("{{- if and .Values.serviceMonitor.enabled")
    assert "monitoring.coreos.com/v1" in monitor
    assert (TEMPLATES / "pdb.yaml").read_text().startswith(
        "{{- if and .Values.podDisruptionBudget.enabled")


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


def test_templates_read_only_declared_values() -> None:
    references = {m.group(1) for path in TEMPLATES.iterdir()
                  for m in re.finditer(r"\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)",
                                       COMMENT.sub("", path.read_text()))}
    assert references
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
    binary = shutil.which("helm")
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


@pytest.mark.parametrize("case", ["defaults", "everything-on", "sidecar-mode"])
def test_helm_template_renders_valid_objects(case: str, tmp_path: Path) -> None:
    overrides = {
        "defaults": [],
        "everything-on": ["--set", "serviceMonitor.enabled=true",
                          "--set", "podDisruptionBudget.enabled=true",
                          "--set", "persistence.enabled=true"],
        "sidecar-mode": sidecar_overrides(tmp_path),
    }[case]
    rendered = helm("template", "demo", str(CHART), *overrides)
    documents = [d for d in yaml.safe_load_all(rendered) if d]
    kinds = {d["kind"] for d in documents}
    assert "ConfigMap" in kinds
    assert ("Deployment" in kinds) == (case != "sidecar-mode")
    if case == "everything-on":
        assert {"ServiceMonitor", "PodDisruptionBudget", "PersistentVolumeClaim"} <= kinds
    for deployment in (d for d in documents if d["kind"] == "Deployment"):
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
    (rules,) = [d for d in documents if d["metadata"]["name"].endswith("-rules")]
    assert sorted(rules["data"]) == sorted(p.name for p in (ROOT / "rules").glob("*.yaml"))
