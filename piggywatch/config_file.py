"""Reading a configuration file: YAML with ${ENV} interpolation and PIGGYWATCH_* overrides,
validated into ``Settings``.

Every problem is reported in the user's words with the file, the line and the key path,
and unknown keys are errors (with a "did you mean" where a known key is close), because a
misspelt option that is silently ignored is how an alert goes missing.
"""

from __future__ import annotations

import difflib
import os
import re
import ssl
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Union

import yaml
from pydantic import BaseModel, ValidationError

from piggywatch.config import Settings
from piggywatch.config_lazy import resolved
from piggywatch.yamlpos import (
    FileProblem,
    FileProblems,
    KeyPath,
    YamlSyntaxError,
    dotted,
    line_for,
    load_with_lines,
    read_yaml_file,
)

Problem = FileProblem

class ConfigError(FileProblems):
    """The configuration cannot be used; ``problems`` says every reason."""


_ENV_REF = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
OVERRIDE_PREFIX = "PIGGYWATCH_"


def load_settings(path: str | Path, environ: Mapping[str, str] | None = None) -> Settings:
    """Load and validate a configuration file, or raise ConfigError listing every problem."""
    env = os.environ if environ is None else environ
    file = str(path)
    try:
        text = read_yaml_file(Path(path))
    except OSError as exc:
        problem = Problem(file, None, "", f"cannot read the file: {exc.strerror}")
        raise ConfigError([problem]) from exc
    except YamlSyntaxError as exc:
        raise ConfigError([Problem(file, exc.line, "", exc.message)]) from exc
    return parse_settings(text, file, env, check_files=True)


def parse_settings(text: str, file: str, environ: Mapping[str, str], *,
                   check_files: bool = False) -> Settings:
    """Validate YAML ``text`` (named ``file`` in messages) into Settings.

    ``check_files``: also open the TLS and CA files the settings name (relative to the
    working directory, as the daemon opens them), so that what passes here starts.
    """
    try:
        data, lines = load_with_lines(text)
    except YamlSyntaxError as exc:
        raise ConfigError([Problem(file, exc.line, "", exc.message)]) from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([Problem(file, 1, "", "the file must be a mapping of settings")])
    problems: list[Problem] = []
    data = _interpolate(data, (), environ, lines, file, problems)
    _apply_overrides(data, environ, problems)
    context: dict[str, list[tuple[KeyPath, str]]] = {"warnings": []}
    try:
        settings = Settings.model_validate(data, context=context)
    except ValidationError as exc:
        problems.extend(_explain(exc, file, lines))
    else:
        if check_files:
            problems.extend(_file_problems(settings, file, lines))
    if problems:
        raise ConfigError(problems)
    settings._warnings = [str(Problem(file, line_for(path, lines), dotted(path), message))
                          for path, message in context["warnings"]]
    return settings


def _file_problems(settings: Settings, file: str, lines: dict[KeyPath, int]) -> list[Problem]:
    """The TLS and CA files the settings name that cannot be used on this machine."""
    found: list[Problem] = []

    def problem(path: KeyPath, message: str) -> None:
        found.append(Problem(file, line_for(path, lines), dotted(path), message))

    tls = settings.server.tls
    if tls is not None:
        unreadable = [(key, _unreadable(getattr(tls, key))) for key in ("cert_file", "key_file")]
        for key, reason in unreadable:
            if reason:
                problem(("server", "tls", key), reason)
        if not any(reason for _, reason in unreadable):
            try:
                # A key with a passphrase fails here rather than prompting (the server
                # cannot be given one either).
                ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
                    tls.cert_file, tls.key_file, password=lambda: b"")
            except (ssl.SSLError, OSError) as exc:
                problem(("server", "tls"), f"cannot serve TLS with {tls.cert_file!r} and "
                        f"{tls.key_file!r} ({exc}): they must be PEM files, an unencrypted "
                        "key and its certificate")
    ca_file = settings.ha.ca_file
    if ca_file:
        reason = _unreadable(ca_file)
        if reason:
            problem(("ha", "ca_file"), reason)
        else:
            try:
                ssl.create_default_context(cafile=ca_file)
            except (ssl.SSLError, OSError) as exc:
                problem(("ha", "ca_file"), f"{ca_file!r} is not a PEM bundle of CA "
                        f"certificates ({exc})")
    return found


def _unreadable(name: str) -> str:
    """Why ``name`` cannot be read, or ""."""
    try:
        with open(name, "rb"):
            return ""
    except OSError as exc:
        return f"cannot read {name!r} ({Path(name).absolute()}): {exc.strerror}"


def _interpolate(
    value: Any,
    path: KeyPath,
    environ: Mapping[str, str],
    lines: dict[KeyPath, int],
    file: str,
    problems: list[Problem],
) -> Any:
    if isinstance(value, dict):
        return {k: _interpolate(v, (*path, str(k)), environ, lines, file, problems)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, (*path, i), environ, lines, file, problems)
                for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, default = match.group(1), match.group(2)
        if name in environ:
            return environ[name]
        if default is not None:
            return default
        problems.append(Problem(file, line_for(path, lines), dotted(path),
                                f"environment variable {name} is not set "
                                f"(set it, or write ${{{name}:-default}})"))
        return ""

    return _ENV_REF.sub(substitute, value)


def _apply_overrides(data: dict[str, Any], environ: Mapping[str, str],
                     problems: list[Problem]) -> None:
    """Apply PIGGYWATCH_SECTION__KEY=value variables (``__`` separates levels).

    Only variables whose first part names a top-level setting count, so variables such as
    PIGGYWATCH_API_TOKEN stay free for ${...} interpolation.
    """
    top_level = {(f.alias or name) for name, f in Settings.model_fields.items()}
    for var in sorted(environ):
        if not var.startswith(OVERRIDE_PREFIX):
            continue
        parts = var[len(OVERRIDE_PREFIX):].lower().split("__")
        if parts[0] not in top_level:
            continue
        try:
            value = yaml.safe_load(environ[var])
        except yaml.YAMLError:
            value = environ[var]
        cursor: Any = data
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            key: str | int = int(part) if part.isdigit() and isinstance(cursor, list) else part
            if isinstance(cursor, list):
                if not isinstance(key, int) or key >= len(cursor):
                    problems.append(Problem("environment", None, var,
                                            f"no list item {part} to override"))
                    break
                if last:
                    cursor[key] = value
                else:
                    cursor = cursor[key]
            elif isinstance(cursor, dict):
                if last:
                    cursor[key] = value
                else:
                    cursor = cursor.setdefault(key, {})
            else:
                problems.append(Problem("environment", None, var,
                                        f"{'.'.join(parts[:depth])} is not a section"))
                break


def _explain(exc: ValidationError, file: str, lines: dict[KeyPath, int]) -> list[Problem]:
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        loc: KeyPath = tuple(error["loc"])
        if error["type"] == "extra_forbidden":
            message = f"unknown key {loc[-1]!r}"
            known = _known_keys(loc[:-1])
            close = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
            if close:
                message += f"; did you mean {close[0]!r}?"
            elif known:
                message += f"; known keys here: {', '.join(sorted(known))}"
        elif error["type"] == "missing":
            message = f"required key {loc[-1]!r} is missing"
        else:
            message = error["msg"].removeprefix("Value error, ")
        problems.append(Problem(file, line_for(loc, lines), dotted(loc), message))
    return problems


def _known_keys(path: KeyPath) -> list[str]:
    """The keys a model accepts at ``path`` (for "did you mean")."""
    model: Any = Settings
    for part in path:
        if isinstance(part, int):
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return []
        field = next((f for n, f in model.model_fields.items() if (f.alias or n) == part), None)
        if field is None:
            return []
        model = _model_in(field.annotation)
    if isinstance(model, type) and issubclass(model, BaseModel):
        return [f.alias or n for n, f in model.model_fields.items()]
    return []


def _model_in(annotation: Any) -> Any:
    annotation = resolved(annotation)
    origin = typing.get_origin(annotation)
    if origin in (list, Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if isinstance(found, type) and issubclass(found, BaseModel):
                return found
        return None
    return annotation
