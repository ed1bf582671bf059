"""The ``piggywatch`` command."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from piggywatch import __version__
from piggywatch.config import ConfigError, Settings, load_settings

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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="piggywatch")
def main() -> None:
    """PiggyWatch: monitoring and alerting for a Postgres-backed app backend."""


@main.command()
@CONFIG_OPTION
@click.option("--listen", metavar="HOST:PORT", help="Override server.listen.")
def run(config_path: Path, listen: str | None) -> None:
    """Run the daemon until SIGTERM or SIGINT."""
    from piggywatch.daemon import Daemon, exit_now_if_stuck
    from piggywatch.observability import setup_logging, setup_sentry

    settings = _load(config_path)
    setup_logging(settings.logging.level, settings.logging.format)
    setup_sentry(settings.sentry.dsn.get_secret_value(), settings.sentry.environment,
                 __version__)
    daemon = Daemon(settings, listen=listen, base_dir=config_path.resolve().parent)
    exit_now_if_stuck(daemon.run_forever())


@main.command()
@CONFIG_OPTION
def check(config_path: Path) -> None:
    """Validate the configuration; print every problem and exit 1, or a summary and exit 0."""
    from piggywatch.rules.loader import RuleFileError, expand_globs, load_rule_files

    settings = _load(config_path)
    collectors = sum(
        1 for t in settings.targets
        for opts in (t.collectors.connections, t.collectors.database,
                     t.collectors.statements, t.collectors.tables)
        if opts.enabled)
    paths = expand_globs(settings.rule_files, config_path.resolve().parent)
    unmatched = [p for p in settings.rule_files
                 if not expand_globs([p], config_path.resolve().parent)]
    for pattern in unmatched:
        click.echo(f"error: {config_path}: rule_files: {pattern!r} matches no file", err=True)
    try:
        groups = load_rule_files(paths)
    except RuleFileError as exc:
        for problem in exc.problems:
            click.echo(f"error: {problem}", err=True)
        raise SystemExit(1) from None
    if unmatched:
        raise SystemExit(1)
    rules = sum(len(g.rules) for g in groups)
    click.echo(f"{config_path}: OK ({len(settings.targets)} targets, "
               f"{collectors} collectors, {rules} rules in {len(paths)} rule files)")


@main.command()
@CONFIG_OPTION
def sample(config_path: Path) -> None:
    """Run every collector once and print the samples in Prometheus text format."""
    from prometheus_client import generate_latest

    from piggywatch.daemon import Daemon
    from piggywatch.exporter import build_registry
    from piggywatch.observability import setup_logging

    settings = _load(config_path)
    setup_logging("ERROR", "text")
    daemon = Daemon(settings)
    daemon.sample_once()
    sys.stdout.write(generate_latest(build_registry(daemon.store,
                                                    process_metrics=False)).decode())
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

    raise SystemExit(run_demo(listen))


@main.group()
def rules() -> None:
    """Work with alert rule files."""


@rules.command("test")
@click.argument("files", nargs=-1, required=True,
                type=click.Path(dir_okay=False, path_type=Path))
def rules_test(files: tuple[Path, ...]) -> None:
    """Run rule unit tests written for `promtool test rules`; exit 1 if any fails."""
    from piggywatch.rules.unittest import run_rule_tests

    raise SystemExit(run_rule_tests(files))


@main.command()
def version() -> None:
    """Print the version."""
    click.echo(f"piggywatch {__version__}")
