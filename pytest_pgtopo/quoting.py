"""SQL quoting for the few statements the plugin writes itself (identifiers and literals)."""

from __future__ import annotations


def quote_ident(name: str) -> str:
    """A double-quoted identifier, inner double quotes doubled. PgBouncer's auth_file quotes
    user names and passwords the same way."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """A single-quoted string literal (standard_conforming_strings is on since PostgreSQL 9.1)."""
    return "'" + value.replace("'", "''") + "'"
