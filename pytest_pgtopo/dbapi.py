"""Statements on a raw DBAPI connection (any driver, SQLAlchemy's async adapters included)."""

from __future__ import annotations

from typing import Any


def execute(dbapi_connection: Any, sql: str) -> None:
    """Run one statement and close the cursor."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(sql)
    finally:
        cursor.close()


def rows(dbapi_connection: Any, sql: str) -> list[dict[str, Any]]:
    """Run one statement and return its rows as dicts (none for a command without rows)."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(sql)
        if cursor.description is None:
            return []
        names = [column[0] for column in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    finally:
        cursor.close()


def scalar(dbapi_connection: Any, sql: str) -> Any:
    """Run one query and return the first column of its first row (None if no row)."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(sql)
        row = cursor.fetchone()
    finally:
        cursor.close()
    return None if row is None else row[0]
