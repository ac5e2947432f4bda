"""idle_in_transaction_session_timeout, for every driver: the server ends a session left idle
inside a transaction; the next statement fails with an error SQLAlchemy treats as a disconnect,
so the pool replaces the connection.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import sqlalchemy as sa

from pytest_pgtopo import Endpoint, SessionSettings, create_async_engine, create_engine
from pytest_pgtopo.topologies.plain import PlainTopology

from .support import dotted_name, own_error

IDLE_TIMEOUT = SessionSettings(
    application_name="orders-api idle", idle_in_transaction_session_timeout=200
)
IDLE_MESSAGE = "terminating connection due to idle-in-transaction timeout"
# What each driver reports on the next statement: the server's FATAL message when the driver
# reads it before noticing the closed socket, else its own connection-closed error.
IDLE_ERRORS: dict[str, tuple[type[sa.exc.DBAPIError], str, str]] = {
    "asyncpg": (
        sa.exc.InterfaceError,
        "asyncpg.exceptions._base.InterfaceError",
        "connection is closed",
    ),
    "psycopg": (
        sa.exc.InternalError,
        "psycopg.errors.IdleInTransactionSessionTimeout",
        IDLE_MESSAGE,
    ),
    "psycopg2": (
        sa.exc.OperationalError,
        "psycopg2.OperationalError",
        "server closed the connection unexpectedly",
    ),
    "pg8000": (sa.exc.InterfaceError, "pg8000.exceptions.InterfaceError", "network error"),
}


async def _wait_until_gone(topology: PlainTopology, pid: int, timeout: float = 15.0) -> None:
    """Poll pg_stat_activity from the admin connection until backend `pid` has exited."""
    deadline = time.monotonic() + timeout
    while topology.server.admin.scalar(f"SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}"):
        assert time.monotonic() < deadline, f"backend {pid} still there after {timeout} s"
        await asyncio.sleep(0.02)  # Lets an async driver read what the server sends meanwhile.


def _assert_idle_timeout_error(error: sa.exc.DBAPIError, driver: str) -> None:
    wrapper, driver_error, message = IDLE_ERRORS[driver]
    assert (type(error), dotted_name(own_error(error))) == (wrapper, driver_error), repr(error)
    assert message in str(error.orig), repr(error.orig)
    # The pool must see a disconnect, so it replaces the connection instead of reusing it.
    assert error.connection_invalidated, repr(error)


@pytest.mark.usefixtures("pg_sync_engine")
def test_idle_in_transaction_timeout_ends_the_session(
    pg_plain: PlainTopology, pg_plain_database: Endpoint, pgtopo_driver: str
) -> None:
    engine = create_engine(pg_plain_database, pgtopo_driver, settings=IDLE_TIMEOUT)
    try:
        with engine.connect() as conn:
            pid = conn.scalar(sa.text("SELECT pg_backend_pid()"))  # The transaction stays open.
            asyncio.run(_wait_until_gone(pg_plain, pid))
            with pytest.raises(sa.exc.DBAPIError) as info:
                conn.execute(sa.text("SELECT 1"))
            _assert_idle_timeout_error(info.value, pgtopo_driver)
        with engine.connect() as conn:  # The pool replaced it.
            assert conn.scalar(sa.text("SELECT pg_backend_pid()")) != pid
    finally:
        engine.dispose()


@pytest.mark.usefixtures("pg_engine")
async def test_async_idle_in_transaction_timeout_ends_the_session(
    pg_plain: PlainTopology, pg_plain_database: Endpoint, pgtopo_driver: str
) -> None:
    engine = create_async_engine(pg_plain_database, pgtopo_driver, settings=IDLE_TIMEOUT)
    try:
        async with engine.connect() as conn:
            pid = await conn.scalar(sa.text("SELECT pg_backend_pid()"))
            await _wait_until_gone(pg_plain, pid)
            with pytest.raises(sa.exc.DBAPIError) as info:
                await conn.execute(sa.text("SELECT 1"))
            _assert_idle_timeout_error(info.value, pgtopo_driver)
        async with engine.connect() as conn:
            assert await conn.scalar(sa.text("SELECT pg_backend_pid()")) != pid
    finally:
        await engine.dispose()
