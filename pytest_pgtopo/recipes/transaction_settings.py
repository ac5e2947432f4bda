"""SET LOCAL for SQLAlchemy connections: settings that last until the transaction ends.

A setting made with SET LOCAL (here `set_config(name, value, true)`) reverts at COMMIT or
ROLLBACK, so it never outlives the transaction that needed it. That is what makes it safe
behind PgBouncer in transaction mode, where the next transaction of the same client may run on
another server connection, and where a session-level SET would stay behind on the server
connection for whichever client gets it next.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sqlalchemy
from sqlalchemy.ext.asyncio import AsyncConnection

SettingValue = str | int | bool
"""A GUC value: durations in int are the setting's base unit (milliseconds for timeouts)."""


def set_local(
    conn: sqlalchemy.Connection,
    settings: Mapping[str, SettingValue] | None = None,
    /,
    **more: SettingValue,
) -> None:
    """Apply settings to the current transaction of `conn` (beginning one if none is open).

    One round trip for all of them; names and values travel as bound parameters::

        with engine.begin() as conn:
            set_local(conn, statement_timeout="2s", search_path=search_path_value("tenant_a"))
            set_local(conn, {"app.tenant_id": "42"})  # names that are not Python identifiers

    Refuses an AUTOCOMMIT connection, where the setting would end with its own statement.
    """
    _refuse_autocommit(conn.connection.dbapi_connection)
    statement, params = _statement({**(settings or {}), **more})
    conn.execute(statement, params)


async def aset_local(
    conn: AsyncConnection,
    settings: Mapping[str, SettingValue] | None = None,
    /,
    **more: SettingValue,
) -> None:
    """`set_local` for an AsyncConnection."""
    _refuse_autocommit((await conn.get_raw_connection()).dbapi_connection)
    statement, params = _statement({**(settings or {}), **more})
    await conn.execute(statement, params)


def _statement(
    settings: Mapping[str, SettingValue],
) -> tuple[sqlalchemy.TextClause, dict[str, str]]:
    if not settings:
        raise ValueError("set_local() needs at least one setting")
    calls, params = [], {}
    for number, (name, value) in enumerate(settings.items()):
        calls.append(f"set_config(:n{number}, :v{number}, true)")
        params[f"n{number}"] = name
        params[f"v{number}"] = ("on" if value else "off") if isinstance(value, bool) else str(value)
    return sqlalchemy.text("SELECT " + ", ".join(calls)), params


def _refuse_autocommit(dbapi_connection: Any) -> None:
    if getattr(dbapi_connection, "autocommit", False):
        raise ValueError(
            "set_local() on an AUTOCOMMIT connection: each statement is its own transaction, so "
            "the setting would be gone before the next one; use engine.begin() or conn.begin()"
        )
