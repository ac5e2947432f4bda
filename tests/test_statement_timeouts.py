"""statement_timeout, for every driver: per connection (SessionSettings) and per transaction
(SET LOCAL), directly and through PgBouncer. A cancelled statement raises each driver's own
error class with SQLSTATE 57014 and leaves the session usable.
"""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from pytest_pgtopo import Endpoint, SessionSettings, create_async_engine, create_engine
from pytest_pgtopo.recipes.transaction_settings import aset_local, set_local

from .support import dotted_name, own_error

SLEEP = sa.text("SELECT pg_sleep(10)")
TIMEOUT_MESSAGE = "canceling statement due to statement timeout"
# SQLSTATE 57014, per driver: the SQLAlchemy exception and the driver's own exception. asyncpg's
# arrives as a plain DBAPIError: `except OperationalError` misses it; test the SQLSTATE instead.
TIMEOUT_ERRORS: dict[str, tuple[type[sa.exc.DBAPIError], str]] = {
    "asyncpg": (sa.exc.DBAPIError, "asyncpg.exceptions.QueryCanceledError"),
    "psycopg": (sa.exc.OperationalError, "psycopg.errors.QueryCanceled"),
    "psycopg2": (sa.exc.OperationalError, "psycopg2.errors.QueryCanceled"),
    "pg8000": (sa.exc.ProgrammingError, "pg8000.dbapi.ProgrammingError"),
}


def _sqlstate(error: BaseException) -> str | None:
    """The SQLSTATE a driver's exception carries, however the driver spells it."""
    for attribute in ("sqlstate", "pgcode"):
        value = getattr(error, attribute, None)
        if value:
            return str(value)
    args = getattr(error, "args", ())
    return args[0].get("C") if args and isinstance(args[0], dict) else None


def _assert_statement_timeout(error: sa.exc.DBAPIError, driver: str, started: float) -> None:
    assert time.monotonic() - started < 5, "pg_sleep(10) was not cancelled in time"
    wrapper, driver_error = TIMEOUT_ERRORS[driver]
    assert (type(error), dotted_name(own_error(error))) == (wrapper, driver_error), repr(error)
    assert TIMEOUT_MESSAGE in str(error.orig)
    assert _sqlstate(own_error(error)) == "57014"
    assert not error.connection_invalidated, "a cancelled statement leaves the session usable"


SHORT_TIMEOUT = SessionSettings(application_name="orders-api timeouts", statement_timeout=200)


@pytest.mark.usefixtures("pg_sync_engine")
def test_statement_timeout_per_connection(pg_plain_database: Endpoint, pgtopo_driver: str) -> None:
    engine = create_engine(pg_plain_database, pgtopo_driver, settings=SHORT_TIMEOUT)
    try:
        with engine.connect() as conn:
            started = time.monotonic()
            with pytest.raises(sa.exc.DBAPIError) as info:
                conn.execute(SLEEP)
            _assert_statement_timeout(info.value, pgtopo_driver, started)
            conn.rollback()
            assert conn.scalar(sa.text("SHOW statement_timeout")) == "200ms"  # Every transaction.
    finally:
        engine.dispose()


@pytest.mark.usefixtures("pg_engine")
async def test_async_statement_timeout_per_connection(
    pg_plain_database: Endpoint, pgtopo_driver: str
) -> None:
    engine = create_async_engine(pg_plain_database, pgtopo_driver, settings=SHORT_TIMEOUT)
    try:
        async with engine.connect() as conn:
            started = time.monotonic()
            with pytest.raises(sa.exc.DBAPIError) as info:
                await conn.execute(SLEEP)
            _assert_statement_timeout(info.value, pgtopo_driver, started)
            await conn.rollback()
            assert await conn.scalar(sa.text("SHOW statement_timeout")) == "200ms"
    finally:
        await engine.dispose()


def _sync_set_local_timeout(engine: sa.Engine, driver: str) -> None:
    with engine.connect() as conn:
        set_local(conn, statement_timeout=200)
        started = time.monotonic()
        with pytest.raises(sa.exc.DBAPIError) as info:
            conn.execute(SLEEP)
        _assert_statement_timeout(info.value, driver, started)
        conn.rollback()
        # Only that transaction: the engine's own 30 s is back.
        assert conn.scalar(sa.text("SHOW statement_timeout")) == "30s"


async def _async_set_local_timeout(engine: AsyncEngine, driver: str) -> None:
    async with engine.connect() as conn:
        await aset_local(conn, statement_timeout=200)
        started = time.monotonic()
        with pytest.raises(sa.exc.DBAPIError) as info:
            await conn.execute(SLEEP)
        _assert_statement_timeout(info.value, driver, started)
        await conn.rollback()
        assert await conn.scalar(sa.text("SHOW statement_timeout")) == "30s"


def test_statement_timeout_per_transaction(pg_sync_engine: sa.Engine, pgtopo_driver: str) -> None:
    _sync_set_local_timeout(pg_sync_engine, pgtopo_driver)


def test_statement_timeout_per_transaction_through_pgbouncer(
    pgbouncer_sync_engine: sa.Engine, pgtopo_driver: str
) -> None:
    _sync_set_local_timeout(pgbouncer_sync_engine, pgtopo_driver)


async def test_async_statement_timeout_per_transaction(
    pg_engine: AsyncEngine, pgtopo_driver: str
) -> None:
    await _async_set_local_timeout(pg_engine, pgtopo_driver)


async def test_async_statement_timeout_per_transaction_through_pgbouncer(
    pgbouncer_engine: AsyncEngine, pgtopo_driver: str
) -> None:
    await _async_set_local_timeout(pgbouncer_engine, pgtopo_driver)
