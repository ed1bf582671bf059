"""Finding pg_stat_statements in a database and working out how to read it.

Every prerequisite that can be missing gets its own plain message saying what to do:
the library not preloaded, the extension not created (and where it was looked for), the
role not allowed to see other users' statements, the schema not usable by the role. The
queries are built from the columns the view actually has, never from the version number.
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql

from piggywatch.collectors.base import CollectorError
from piggywatch.collectors.postgres.target import Session

# Where pg_stat_statements usually lives when no schema is configured: Supabase puts
# extensions in their own schema; plain installations use public.
DEFAULT_SCHEMAS = ("extensions", "public")

NOT_LOADED = ("pg_stat_statements is not loaded: add it to shared_preload_libraries in "
              "postgresql.conf and restart PostgreSQL")

# pg_stat_statements.max exists only when the library was loaded at server start
# (pg_settings leaves out the placeholder that a mere line in postgresql.conf creates).
_FACTS = """
SELECT current_user, current_database(),
       (SELECT setting FROM pg_settings WHERE name = 'pg_stat_statements.max'),
       pg_has_role(current_user, 'pg_read_all_stats', 'USAGE'),
       current_schemas(false)::text[],
       (SELECT n.nspname::text FROM pg_extension e
        JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'pg_stat_statements'),
       ARRAY(SELECT DISTINCT n.nspname::text FROM pg_proc p
             JOIN pg_namespace n ON n.oid = p.pronamespace
             WHERE p.proname = 'pg_stat_statements')
"""


@dataclass(frozen=True, slots=True)
class StatementsSetup:
    """Where pg_stat_statements is and the queries that read it on this server.

    ``main`` takes the parameters of ``statement_positions.Positions`` and returns one row
    holding the entries that changed as arrays (the bytes of binary arrays), one per
    column: position (from 1), dbid, userid, queryid, toplevel, calls, exec time, rows,
    block read time, block write time, fold (what the next read compares with); after two
    columns (dealloc, stats_reset as epoch) that are NULL in that row. With
    pg_stat_statements_info (PostgreSQL 14+), a row of it comes before and after.
    """

    schema: str
    main: sql.Composed
    texts: sql.Composed
    max_entries: float


# An entry's identity and calls as one int8, compared with what the last read found at its
# position: one int8[] parameter where comparing calls, queryid and owner took three (each
# costs PostgreSQL its parsing of thousands of elements). The same entry with other calls
# folds to another value, always (the same identity XORed with another calls * 2 +
# toplevel). Another entry at the position (a replacement: another queryid or owner) passes
# for the old one only if the XOR of its three parts is exactly the old 64 bits. queryid is
# itself a 64-bit hash, and pg_stat_statements already merges statements whose queryids
# collide, so the fold adds a risk of that order (about 2^-64 per replaced entry); what
# follows is that the replacement goes unseen (and the old entry counted as there) until
# its calls change. The query returns the fold of each entry it returns, so the client
# never computes it.
_FOLD = ("(coalesce(queryid, 0) # ((dbid::int8 << 32) | userid::int8) "
         "# (calls * 2 + {top}::int))")


def find_statements(db: Session, schema: str | None) -> StatementsSetup:
    """Check every prerequisite and build the queries, or raise CollectorError("setup")."""
    (user, database, max_setting, can_read_all, search_path, ext_schema,
     function_schemas) = db.fetch(_FACTS)[0]
    if max_setting is None:
        hint = "" if ext_schema else (
            f", then run CREATE EXTENSION pg_stat_statements in database {database!r}")
        raise CollectorError("setup", NOT_LOADED + hint)
    found = _find_schema(schema, database, list(search_path), ext_schema, set(function_schemas))
    if not can_read_all:
        raise CollectorError(
            "setup",
            f"role {user!r} may not read other users' statistics: pg_stat_statements shows "
            "<insufficient privilege> as their query text and NULL as their queryid. Run "
            f"GRANT pg_monitor TO {_ident(user)} (or grant pg_read_all_stats).")
    if not db.fetch("SELECT has_schema_privilege(%s, 'USAGE')", (found,))[0][0]:
        raise CollectorError(
            "setup",
            f"role {user!r} may not use schema {found!r}, where pg_stat_statements is "
            f"installed. Run GRANT USAGE ON SCHEMA {_ident(found)} TO {_ident(user)}.")
    return _build(db, found, float(max_setting))


def _find_schema(configured: str | None, database: str, search_path: list[str],
                 ext_schema: str | None, function_schemas: set[str]) -> str:
    if configured is not None:
        if configured in function_schemas:
            return configured
        fix = (f"it is installed in schema {ext_schema!r}: set the statements collector's "
               f"schema to {ext_schema!r}") if ext_schema else (
            f"run CREATE EXTENSION pg_stat_statements SCHEMA {_ident(configured)} "
            "in that database")
        raise CollectorError(
            "setup", f"pg_stat_statements is not created in database {database!r} (looked "
            f"in schema {configured!r}, as configured): {fix}")
    for candidate in dict.fromkeys([*DEFAULT_SCHEMAS, *search_path]):
        if candidate in function_schemas:
            return candidate
    if ext_schema:
        return str(ext_schema)  # not where it usually is, but the catalog says where
    path = ", ".join(search_path) or "empty"
    raise CollectorError(
        "setup",
        f"pg_stat_statements is not created in database {database!r} (looked in schemas "
        f"{', '.join(DEFAULT_SCHEMAS)} and the search path: {path}): run CREATE EXTENSION "
        "pg_stat_statements in that database, or set the statements collector's schema")


def _build(db: Session, schema: str, max_entries: float) -> StatementsSetup:
    """The queries for this server's pg_stat_statements, by the columns it actually has."""
    columns = db.columns("pg_stat_statements", schema)

    def pick(*names: str) -> sql.Composable:
        for name in names:
            if name in columns:
                return sql.Identifier(name)
        raise CollectorError(
            "setup", f"pg_stat_statements in schema {schema!r} has none of the columns "
            f"{', '.join(names)}: an unsupported version")

    # PostgreSQL 13 split total_time into plan and exec time; 17 renamed blk_*_time.
    exec_time = pick("total_exec_time", "total_time")
    read_time = pick("shared_blk_read_time", "blk_read_time")
    write_time = pick("shared_blk_write_time", "blk_write_time")
    # Before 14 there is no toplevel: every entry counts as top level.
    toplevel = sql.Identifier("toplevel") if "toplevel" in columns else sql.SQL("true")
    func = sql.SQL("{}.pg_stat_statements").format(sql.Identifier(schema))
    # One row of arrays rather than thousands of rows, each array as its binary bytes
    # (array_send is what binary output would run anyway), of the entries that differ from
    # what the last read found at their position (statement_positions): the last position
    # (%s) and, per position, one int8 folding the entry's identity and calls (_FOLD). Each
    # entry returned comes with its position (ordinality), dbid, userid, queryid (0 for one
    # the role may not see), toplevel, counters, and its fold for the next read's
    # parameter. Positions past the array's end read as NULL: new entries are returned
    # (by ordinality >= %s too); an empty array returns every entry.
    # (false): no query texts, which PostgreSQL would read from a file.
    main = sql.SQL(
        "SELECT NULL::int8, NULL::float8, array_send(array_agg(ordinality)), "
        "array_send(array_agg(dbid)), array_send(array_agg(userid)), "
        "array_send(array_agg(coalesce(queryid, 0))), array_send(array_agg({top})), "
        "array_send(array_agg(calls)), array_send(array_agg({exec})), "
        "array_send(array_agg(rows)), array_send(array_agg({read})), "
        "array_send(array_agg({write})), array_send(array_agg({fold})) "
        "FROM {func}(false) WITH ORDINALITY "
        "WHERE ordinality >= %s OR {fold} IS DISTINCT FROM (%s::int8[])[ordinality]"
    ).format(exec=exec_time, read=read_time, write=write_time, func=func, top=toplevel,
             fold=sql.SQL(_FOLD).format(top=toplevel))
    if db.columns("pg_stat_statements_info", schema):
        # The reset time on both sides of the snapshot, in the same round trip: a UNION ALL
        # runs its branches in order.
        info = sql.SQL(
            "SELECT dealloc, EXTRACT(EPOCH FROM stats_reset)::float8, NULL::bytea, "
            "NULL::bytea, NULL::bytea, NULL::bytea, NULL::bytea, NULL::bytea, NULL::bytea, "
            "NULL::bytea, NULL::bytea, NULL::bytea, NULL::bytea "
            "FROM {}.pg_stat_statements_info"
        ).format(sql.Identifier(schema))
        main = sql.SQL("{info} UNION ALL ({main}) UNION ALL {info}").format(info=info, main=main)
    texts = sql.SQL(
        "SELECT dbid, userid, queryid, query FROM {}(true) WHERE queryid = ANY(%s::int8[])"
    ).format(func)
    return StatementsSetup(schema=schema, main=main, texts=texts, max_entries=max_entries)


def _ident(name: str) -> str:
    """``name`` quoted as an SQL identifier, for the commands suggested in messages."""
    if name.isidentifier() and name.islower() and name.isascii():
        return name
    return '"' + name.replace('"', '""') + '"'
