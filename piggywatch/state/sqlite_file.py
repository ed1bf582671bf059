"""The SQLite state file as a thing on disk: usable at start, and still there while running.

At start, a file that cannot be used (not a database, damaged, a directory, on a read-only
file system, locked by another process) is one ``StateUnusable`` error that names the file,
says what is wrong and what to do, instead of a traceback from deep inside the first part
that opens it.

While running, SQLite keeps writing to the file it opened: deleted, it writes to a file
nobody will ever read again (everything recorded since is lost at the next restart);
replaced, it writes to the old one. ``FileWatch`` notices both, a read-only file system and
failed writes, in a few system calls cheap enough to run on every /readyz.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from pathlib import Path

__all__ = ["FileWatch", "StateUnusable", "explain_open_error", "inspect_state_file",
           "move_aside", "unusable_path"]

log = logging.getLogger(__name__)

# SQLite's messages for failures that come from the file or its disk, not from the SQL.
_FILE_REASONS = ("readonly", "read-only", "disk I/O", "is full", "malformed", "not a database",
                 "unable to open")


class StateUnusable(Exception):
    """The state cannot be used; the message names the file, what is wrong and what to do."""


def move_aside(path: Path) -> str:
    return (f"Move it aside with its -wal and -shm files (mv {path} {path}.broken; "
            f"mv {path}-wal {path}-wal.broken; mv {path}-shm {path}-shm.broken) or restore "
            "it from a backup. PiggyWatch then starts with an empty state: alert state, "
            "silences, acknowledgements and unsent notifications of the old file are not "
            "carried over.")


def unusable_path(path: Path) -> str | None:
    """Why ``path`` cannot hold the state file, found without opening it; None if it can."""
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                return (f"state file {path}: {parent} is not a directory. Point `state:` at "
                        "a file in a directory (e.g. sqlite:///var/lib/piggywatch/state.db).")
            break
    if path.is_dir():
        return (f"state file {path}: is a directory, not a file. Point `state:` at a file "
                f"inside it (sqlite://{path}/state.db), or move the directory aside.")
    if not path.exists():
        for suffix in ("-wal", "-shm"):
            leftover = Path(f"{path}{suffix}")
            if leftover.exists():
                return (f"state file {path}: it is missing but {leftover} is there (left "
                        "from a file moved aside?); SQLite would replay it into a new file. "
                        f"Move {path}-wal and {path}-shm aside too, or put the file back.")
    return _unwritable(path, at_start=True)


def inspect_state_file(path: Path) -> tuple[str | None, str | None]:
    """What ``run`` would refuse about the state file at ``path``, found without creating
    or changing any file (for ``piggywatch check``): (error, warning), None where none.

    A lock held by another process is only a warning: it is a moment's state (a running
    PiggyWatch on this file), not the configuration's.
    """
    found = unusable_path(path)
    if found or not path.exists():
        return found, None
    from piggywatch.state.migrations import LATEST

    live = any(Path(f"{path}{suffix}").exists() for suffix in ("-wal", "-shm"))
    # Without -wal/-shm beside it, even a read-only open of a WAL file would create them:
    # read the file as it is (immutable) instead. With them, read through them.
    mode = "mode=ro" if live else "immutable=1"
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?{mode}", uri=True, timeout=0.5)
        try:
            row = conn.execute("PRAGMA quick_check(1)").fetchone()
            if row is None or row[0] != "ok":
                return (f"state file {path}: is damaged ({row[0] if row else 'no answer'}). "
                        + move_aside(path)), None
            tables = {name for (name,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "schema_migrations" in tables:
                (version,) = conn.execute(
                    "SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()
                if int(version) > LATEST:
                    return (f"state file {path}: was written by a newer PiggyWatch (schema "
                            f"version {version}; this one knows {LATEST}). Run the newer "
                            "version, or move the file aside. " + move_aside(path)), None
        finally:
            conn.close()
        if live:
            return None, _held_by_another(path)
    except sqlite3.Error as exc:
        message = explain_open_error(path, exc)
        return (None, message) if "locked" in str(exc) else (message, None)
    return None, None


def _held_by_another(path: Path) -> str | None:
    """Whether another process holds the file's write lock now (its -wal/-shm exist)."""
    try:
        conn = sqlite3.connect(path, timeout=0.2, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
        finally:
            conn.close()
    except sqlite3.Error as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            return (f"state file {path}: is locked by another process now (a running "
                    "PiggyWatch on this file?): `run` refuses to start while it is.")
    return None


def _unwritable(path: Path, *, at_start: bool) -> str | None:
    directory = next((p for p in (path.parent, *path.parent.parents) if p.exists()), None)
    if directory is None:
        return None
    then = ("Mount a writable volume there or point `state:` at a writable path." if at_start
            else "PiggyWatch carries on as soon as it can write again.")
    try:
        read_only = bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    if read_only:
        return (f"state file {path}: cannot be written: read-only file system (a read-only "
                f"volume, or a read-only root file system?). {then}")
    for place in (path, directory) if path.exists() else (directory,):
        if not os.access(place, os.W_OK):
            return (f"state file {path}: cannot be written by this user (uid {os.getuid()}): "
                    f"permission denied on {place}. Give it write access to the file and its "
                    f"directory (the -wal and -shm files are created beside it). {then}")
    return None


def explain_open_error(path: Path, exc: sqlite3.Error) -> str:
    """What an error opening (or checking) the state file means, and what to do."""
    text = str(exc)
    if "file is not a database" in text:
        return (f"state file {path}: is not a SQLite database (or its header is damaged). "
                + move_aside(path))
    if "malformed" in text or "corrupt" in text:
        return f"state file {path}: is damaged ({text}). " + move_aside(path)
    if "locked" in text or "busy" in text:
        return (f"state file {path}: is locked by another process ({text}): another "
                "PiggyWatch on the same file, or an open sqlite3 session? Stop it; several "
                "replicas need a postgresql:// state.")
    if "readonly" in text or "read-only" in text:
        return (f"state file {path}: cannot be written ({text}). Mount a writable volume "
                "there or point `state:` at a writable path.")
    if "is full" in text:
        return f"state file {path}: the disk is full ({text}). Free some space."
    return f"state file {path}: cannot be opened ({text})."


class FileWatch:
    """Whether the state file opened at start is still the one at its path, and writable."""

    def __init__(self, path: Path) -> None:
        self.path = path
        info = path.stat()
        self._identity = (info.st_dev, info.st_ino)
        self._lock = threading.Lock()
        self._write_error = ""

    def problem(self) -> str:
        """Why the state is not being kept now, in the user's words; "" when it is."""
        try:
            info = self.path.stat()
        except FileNotFoundError:
            return (f"state file {self.path}: was deleted (or moved) while PiggyWatch runs: "
                    "alert state, silences, acknowledgements and the outbox are now written "
                    "to a file that the next start will not see. Put the file back, or "
                    "restart PiggyWatch to start a new one.")
        except OSError as exc:
            return f"state file {self.path}: cannot be looked at: {exc.strerror}"
        if (info.st_dev, info.st_ino) != self._identity:
            return (f"state file {self.path}: was replaced by another file while PiggyWatch "
                    "runs: PiggyWatch still writes the old one, which the next start will "
                    "not see. Put the old file back, or restart PiggyWatch to use the new "
                    "one.")
        unwritable = _unwritable(self.path, at_start=False)
        if unwritable:
            return unwritable
        with self._lock:
            if self._write_error:
                return f"state file {self.path}: the last write failed: {self._write_error}"
        return ""

    def write_failed(self, exc: sqlite3.Error) -> None:
        """A transaction on the file failed; remembered when the file is the reason (a
        read-only or full disk, damage), not the SQL."""
        text = str(exc)
        if any(reason in text for reason in _FILE_REASONS):
            with self._lock:
                self._write_error = text

    def written(self) -> None:
        """A transaction that changed rows committed: writes work (again)."""
        if self._write_error:
            with self._lock:
                self._write_error = ""
