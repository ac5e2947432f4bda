"""Schema per tenant: which schemas unqualified table names resolve to.

Two ways, for two kinds of connection:
- `search_path_on_connect(engine, "tenant_a")`: every new connection of the engine runs
  `SET search_path` once. Direct connections only: behind PgBouncer in transaction mode a
  session-level SET stays on the server connection, which other clients get next.
- `tenant(engine, "tenant_a")`: a transaction whose search_path is set with SET LOCAL. Works
  direct and through a transaction pooler, and one engine can serve every tenant.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import (
    AbstractAsyncContextManager,
    AbstractContextManager,
    asynccontextmanager,
    contextmanager,
)
from typing import Any, overload

import sqlalchemy
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .. import dbapi
from ..quoting import quote_ident
from .transaction_settings import aset_local, set_local


def search_path_value(*schemas: str) -> str:
    """A search_path value naming `schemas` exactly (quoted, so case and spaces are kept).

    >>> search_path_value("tenant_a", "public")
    '"tenant_a", "public"'
    """
    if not schemas:
        raise ValueError("name at least one schema")
    return ", ".join(quote_ident(schema) for schema in schemas)


def search_path_on_connect(engine: sqlalchemy.Engine | AsyncEngine, *schemas: str) -> None:
    """Set search_path to `schemas` on every connection `engine` opens (a "connect" event).

    The SET is committed: psycopg, psycopg2, pg8000 and SQLAlchemy's asyncpg adapter open a
    transaction on the first statement, and left open it would be rolled back (taking the
    search_path with it) by the first ROLLBACK. Direct connections only; behind a transaction
    pooler use `tenant()` or `set_local()`.
    """
    statement = f"SET search_path TO {search_path_value(*schemas)}"

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi.execute(dbapi_connection, statement)
        if not getattr(dbapi_connection, "autocommit", False):
            dbapi_connection.commit()

    target = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
    sqlalchemy.event.listen(target, "connect", on_connect)


@overload
def tenant(
    engine: sqlalchemy.Engine, *schemas: str
) -> AbstractContextManager[sqlalchemy.Connection]: ...
@overload
def tenant(engine: AsyncEngine, *schemas: str) -> AbstractAsyncContextManager[AsyncConnection]: ...
def tenant(
    engine: sqlalchemy.Engine | AsyncEngine, *schemas: str
) -> AbstractContextManager[sqlalchemy.Connection] | AbstractAsyncContextManager[AsyncConnection]:
    """A transaction (committed on success) that sees `schemas` first (SET LOCAL search_path)::

    with tenant(engine, "tenant_a") as conn:              # sync Engine
        conn.execute(text("INSERT INTO orders ..."))
    async with tenant(async_engine, "tenant_a") as conn:  # AsyncEngine
        ...
    """
    path = search_path_value(*schemas)
    if isinstance(engine, AsyncEngine):
        return _async_tenant(engine, path)
    return _sync_tenant(engine, path)


@contextmanager
def _sync_tenant(engine: sqlalchemy.Engine, path: str) -> Iterator[sqlalchemy.Connection]:
    with engine.begin() as conn:
        set_local(conn, search_path=path)
        yield conn


@asynccontextmanager
async def _async_tenant(engine: AsyncEngine, path: str) -> AsyncIterator[AsyncConnection]:
    async with engine.begin() as conn:
        await aset_local(conn, search_path=path)
        yield conn
