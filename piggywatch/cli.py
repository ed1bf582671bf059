"""The ``piggywatch`` command."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from piggywatch import __version__
from piggywatch.api_client import (
    DEFAULT_URL,
    ApiClient,
    ApiClientError,
    alerts_table,
    printable,
    silences_table,
)
from piggywatch.config import Settings, check_listen
from piggywatch.config_file import ConfigError, load_settings
from piggywatch.yamlpos import FileProblems

CONFIG_OPTION = click.option(
    "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
    envvar="PIGGYWATCH_CONFIG", required=True, show_envvar=True,
    help="The YAML configuration file.")


def _load(config_path: Path) -> Settings:
    try:
        return load_settings(config_path)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(f"error: {problem}", err=True)
        raise SystemExit(1) from None


def _unmatched_rule_files(config_path: Path, settings: Settings) -> bool:
    """Print an error for each rule_files pattern that matches no file; True if one did not.

    Both check and run refuse them: starting without rules that were meant to be there
    would look healthy while no alert can fire."""
    from piggywatch.rules.loader import unmatched_patterns

    unmatched = unmatched_patterns(settings.rule_files, config_path.resolve().parent)
    for pattern in unmatched:
        click.echo(f"error: {config_path}: rule_files: {pattern!r} matches no file", err=True)
    return bool(unmatched)


def _listen_option(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return check_listen(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="piggywatch")
def main() -> None:
    """PiggyWatch: monitoring and alerting for a Postgres-backed app backend."""


@main.command()
@CONFIG_OPTION
@click.option("--listen", metavar="HOST:PORT", callback=_listen_option,
              help="Override server.listen.")
def run(config_path: Path, listen: str | None) -> None:
    """Run the daemon until SIGTERM or SIGINT."""
    import logging

    from piggywatch.daemon import Daemon, ListenError, exit_now_if_stuck
    from piggywatch.observability import setup_logging, setup_sentry

    _tune_process()
    settings = _load(config_path)
    if _unmatched_rule_files(config_path, settings):
        raise SystemExit(1)
    setup_logging(settings.logging.level, settings.logging.format)
    for warning in settings.load_warnings():
        logging.getLogger(__name__).warning("%s", warning)
    setup_sentry(settings.sentry.dsn.get_secret_value(), settings.sentry.environment,
                 __version__)
    from piggywatch.state import StateUnusable

    daemon = Daemon(settings, listen=listen, base_dir=config_path.resolve().parent)
    try:
        clean = daemon.run_forever()
    except (StateUnusable, ListenError) as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(1) from None
    except FileProblems as exc:  # rule files that do not load: not started without them
        for problem in exc.problems:
            click.echo(f"error: {problem}", err=True)
        raise SystemExit(1) from None
    exit_now_if_stuck(clean)


@main.command()
@CONFIG_OPTION
def check(config_path: Path) -> None:
    """Validate the configuration; print every problem and exit 1, or a summary and exit 0."""
    from piggywatch.rules.loader import RuleFileError, expand_globs, load_rule_files

    settings = _load(config_path)
    for warning in settings.load_warnings():
        click.echo(f"warning: {warning}", err=True)
    if any(c.enabled for c in settings.sources.cost):
        from piggywatch.collectors.cost import stale_prices_warning

        stale = stale_prices_warning(datetime.now(UTC).date())
        if stale is not None:
            click.echo(f"warning: {config_path}: {stale}", err=True)
    collectors = sum(
        1 for t in settings.targets
        for opts in (t.collectors.connections, t.collectors.database,
                     t.collectors.statements, t.collectors.tables)
        if opts.enabled)
    paths = expand_globs(settings.rule_files, config_path.resolve().parent)
    unmatched = _unmatched_rule_files(config_path, settings)
    try:
        groups = load_rule_files(paths)
    except RuleFileError as exc:
        for problem in exc.problems:
            click.echo(f"error: {problem}", err=True)
        raise SystemExit(1) from None
    if unmatched:
        raise SystemExit(1)
    state_problem, state_warning = _state_file_problem(settings.state)
    if state_warning:
        click.echo(f"warning: {config_path}: state: {state_warning}", err=True)
    if state_problem:
        click.echo(f"error: {config_path}: state: {state_problem}", err=True)
        raise SystemExit(1)
    rules = sum(len(g.rules) for g in groups)
    click.echo(f"{config_path}: OK ({len(settings.targets)} targets, "
               f"{collectors} collectors, {rules} rules in {len(paths)} rule files)")


def _state_file_problem(state_url: str) -> tuple[str | None, str | None]:
    """(error, warning) about a SQLite state file, looked at without creating it (`run`
    opens it relative to the working directory, as this does)."""
    if state_url.startswith(("postgresql://", "postgres://")):
        return None, None  # a state database that is down is waited for, not refused
    from piggywatch.state import sqlite_path
    from piggywatch.state.sqlite_file import inspect_state_file

    path = sqlite_path(state_url)
    return inspect_state_file(path if path.is_absolute() else Path.cwd() / path)


@main.command()
@CONFIG_OPTION
def sample(config_path: Path) -> None:
    """Run every collector once and print the samples in Prometheus text format."""
    from piggywatch.daemon import Daemon
    from piggywatch.exporter import build_registry, render_text
    from piggywatch.observability import setup_logging

    settings = _load(config_path)
    setup_logging("ERROR", "text")
    daemon = Daemon(settings)
    daemon.sample_once()
    sys.stdout.write(render_text(build_registry(daemon.store, process_metrics=False)).decode())
    down = daemon.unreachable()
    for name, reason in down.items():
        click.echo(f"error: target {name} is unreachable: {reason}", err=True)
    raise SystemExit(1 if down else 0)


@main.command()
@click.option("--listen", metavar="HOST:PORT", default="127.0.0.1:9790", show_default=True,
              help="Where the demo daemon serves /metrics.")
def demo(listen: str) -> None:
    """Start a throwaway PostgreSQL with synthetic load and monitor it (Ctrl-C stops)."""
    from piggywatch.demo.run import run_demo

    _tune_process()  # the demo's daemon is the one `run` starts, with a database beside it
    raise SystemExit(run_demo(listen))


def _tune_process() -> None:
    """The daemon's allocator and collector settings: process-wide, and before any thread
    (Sentry's, the scheduler's) takes a malloc arena."""
    from piggywatch import allocator, gc_tuning

    allocator.tune()
    gc_tuning.tune()


@main.group()
def rules() -> None:
    """Work with alert rule files."""


@rules.command("test")
@click.argument("files", nargs=-1, required=True,
                type=click.Path(dir_okay=False, path_type=Path))
def rules_test(files: tuple[Path, ...]) -> None:
    """Run rule unit tests written for `promtool test rules`; exit 1 if any fails."""
    from piggywatch.rules.rule_tests import run_rule_tests

    raise SystemExit(run_rule_tests(files))


def _api_options(command: Callable[..., None]) -> Callable[..., None]:
    """--url, --token and --cacert, shared by the commands that call a running daemon."""
    for option in reversed((
        click.option("--url", envvar="PIGGYWATCH_URL", default=DEFAULT_URL, show_default=True,
                     show_envvar=True, help="The running daemon."),
        click.option("--token", envvar="PIGGYWATCH_API_TOKEN", default="", show_envvar=True,
                     show_default=False, help="The daemon's server.api_token."),
        click.option("--cacert", type=click.Path(dir_okay=False), default=None,
                     help="CA bundle that signed the daemon's TLS certificate."),
    )):
        command = option(command)
    return command


def _client(url: str, token: str, cacert: str | None) -> ApiClient:
    return ApiClient(url, token, cacert=cacert)


def _call(action: Callable[[], Any]) -> Any:
    try:
        return action()
    except ApiClientError as exc:
        click.echo(f"error: {printable(str(exc))}", err=True)
        raise SystemExit(1) from None


@main.command()
@_api_options
def alerts(url: str, token: str, cacert: str | None) -> None:
    """List pending and firing alerts with their level, acknowledgement and silences."""
    client = _client(url, token, cacert)
    data = _call(lambda: client.get("/api/v1/alerts"))
    click.echo(alerts_table(data["alerts"]))


@main.command()
@click.argument("fingerprint")
@click.option("--by", default=lambda: os.environ.get("USER", ""), show_default="$USER",
              help="Who acknowledges (recorded and shown to the other receivers).")
@click.option("--comment", default="", help="Why, or what you are doing about it.")
@_api_options
def ack(fingerprint: str, by: str, comment: str, url: str, token: str,
        cacert: str | None) -> None:
    """Acknowledge the incident of an alert (FINGERPRINT, or the incident's own key):
    escalation stops, the receivers already notified are told."""
    if not by:
        raise click.UsageError("say who acknowledges with --by NAME")
    client = _client(url, token, cacert)
    data = _call(lambda: client.post(f"/api/v1/alerts/{fingerprint}/ack",
                                     {"by": by, "comment": comment, "source": "cli"}))
    ack = data["ack"]
    when = "" if data.get("new") else " (already acknowledged)"
    click.echo(printable(f"incident {data['incident']} acknowledged by {ack['by']}{when}"))


@main.group()
def silence() -> None:
    """Create, list and expire silences on a running daemon."""


@silence.command("add")
@click.argument("matchers", nargs=-1, required=True)
@click.option("--duration", default="2h", show_default=True,
              help="How long the silence lasts (30m, 2h, 1d).")
@click.option("--comment", required=True, help="Why (shown with the silence).")
@click.option("--by", default=lambda: os.environ.get("USER", "") or "cli",
              show_default="$USER", help="Who creates the silence.")
@_api_options
def silence_add(matchers: tuple[str, ...], duration: str, comment: str, by: str, url: str,
                token: str, cacert: str | None) -> None:
    """Silence alerts matching every MATCHER (e.g. 'alertname="PostgresSlowStatement"')."""
    client = _client(url, token, cacert)
    data = _call(lambda: client.post("/api/v1/silences", {
        "matchers": list(matchers), "duration": duration, "comment": comment,
        "created_by": by}))
    click.echo(data["silence"]["id"])


@silence.command("list")
@click.option("--all", "show_all", is_flag=True, help="Include expired silences.")
@_api_options
def silence_list(show_all: bool, url: str, token: str, cacert: str | None) -> None:
    """List active and pending silences."""
    client = _client(url, token, cacert)
    data = _call(lambda: client.get("/api/v1/silences"))
    shown = [s for s in data["silences"] if show_all or s["state"] != "expired"]
    click.echo(silences_table(shown))


@silence.command("expire")
@click.argument("silence_id")
@_api_options
def silence_expire(silence_id: str, url: str, token: str, cacert: str | None) -> None:
    """End a silence now."""
    client = _client(url, token, cacert)
    _call(lambda: client.delete(f"/api/v1/silences/{silence_id}"))
    click.echo(f"silence {silence_id} expired")


@main.command()
def version() -> None:
    """Print the version."""
    click.echo(f"piggywatch {__version__}")
