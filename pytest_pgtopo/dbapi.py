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


def scalar(dbapi_connection: Any, sql: str) -> Any:
    """Run one query and return the first column of its first row (None if no row)."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(sql)
        row = cursor.fetchone()
    finally:
        cursor.close()
    return None if row is None else row[0]
