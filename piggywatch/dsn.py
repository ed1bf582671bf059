"""libpq connection strings (URLs and ``key=value`` strings), checked without quoting them.

libpq's parse errors quote the part of the string they stumbled on, which is often the
password ("unexpected spaces found in "ss word@host""), and a password holding an
unescaped ``@`` or ``/`` even parses, leaving the rest of the password in the host, port or
database name that a later connect error prints. So a DSN is parsed here once, the way
libpq will parse it, and a problem is reported by its kind and what to do about it, never
with any part of the string.
"""

from __future__ import annotations

__all__ = ["DsnError", "dsn_problem", "parse_dsn"]

_URL_PREFIXES = ("postgresql://", "postgres://")

_URL_ESCAPES = ("percent-encode the user name and password in a URL (space → %20, @ → %40, "
                "/ → %2F, ? → %3F, # → %23, % → %25), or write a key=value DSN with "
                "password='…'")
_QUOTING = ("in a key=value DSN, put a value holding spaces in single quotes "
            "(password='my secret'), with \\' for a quote and \\\\ for a backslash inside")

# libpq's parse messages, by a phrase that identifies each, and what they mean to a user.
_PARSE_PROBLEMS = (
    ("unexpected spaces found", "a space inside the URL; " + _URL_ESCAPES),
    ("invalid percent-encoded token",
     "a % that does not start a two-digit hex escape; write a literal % as %25"),
    ("missing \"=\" after", "a part without '=' (an unquoted value with a space?); " + _QUOTING),
    ("unterminated quoted string", "a quote that is not closed; " + _QUOTING),
    ("invalid connection option", "an unknown keyword (check the spelling of each key, and "
                                  "quote values holding spaces or '=')"),
    ("invalid URI query parameter", "an unknown parameter after '?' (a '?' inside the "
                                    "password?); " + _URL_ESCAPES),
    ("missing key/value separator", "a '?' not followed by key=value parameters (a '?' "
                                    "inside the password?); " + _URL_ESCAPES),
    ("IPv6 host address", "an IPv6 host address without its closing ']'"),
    ("forbidden value %00", "a %00 (NUL) escape, which libpq forbids"),
)


class DsnError(ValueError):
    """A DSN that libpq cannot use; the message (what is wrong, what to do) quotes no part of
    it."""


def parse_dsn(dsn: str) -> dict[str, str]:
    """The DSN's parameters as libpq reads them; ``DsnError`` when it cannot be used."""
    from psycopg import Error
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = {k: str(v) for k, v in conninfo_to_dict(dsn).items() if v is not None}
    except Error as exc:
        text = str(exc)
        kind = next((why for phrase, why in _PARSE_PROBLEMS if phrase in text),
                    "libpq cannot parse it (its message is not shown: it quotes the string, "
                    "password included); " + (_URL_ESCAPES if _is_url(dsn) else _QUOTING))
        raise DsnError(kind) from None
    _check_parts(dsn, params)
    return params


def dsn_problem(dsn: str) -> str | None:
    """What is wrong with ``dsn`` (safe to print), or None when libpq can use it."""
    try:
        parse_dsn(dsn)
    except DsnError as exc:
        return str(exc)
    return None


def _is_url(dsn: str) -> bool:
    return dsn.lstrip().startswith(_URL_PREFIXES)


def _check_parts(dsn: str, params: dict[str, str]) -> None:
    """Parts that parsed but can only be pieces of a password that was not escaped."""
    hint = _URL_ESCAPES if _is_url(dsn) else _QUOTING
    for host in params.get("host", "").split(","):
        if "@" in host or any(c.isspace() for c in host):
            raise DsnError("the host name holds '@' or a space, so "
                           "part of the password was read as the host; " + hint)
    for port in params.get("port", "").split(","):
        if port and not (port.isdigit() and 1 <= int(port) <= 65535):
            raise DsnError("the port is not a number from 1 to 65535 "
                           "(a ':' or '/' in the password not escaped?); " + hint)
    if _is_url(dsn) and "@" in params.get("dbname", ""):
        raise DsnError("the database name holds '@', so part of the "
                       "password was read as the database name; " + hint)
