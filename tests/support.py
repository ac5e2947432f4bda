"""Helpers shared by the plugin's tests (not fixtures): one query through any driver's recipe."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from pytest_pgtopo import Endpoint, create_async_engine, create_engine, drivers
from pytest_pgtopo.waiting import wait_until


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Wait on a real condition, bounded; the failure names what never happened."""
    wait_until(condition, timeout=timeout, explain=lambda: f"timed out waiting for {what}")


SSL_IN_USE = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"


def query_once(endpoint: Endpoint, driver: str, sql: str = "SELECT 1", **engine_kwargs: Any) -> Any:
    """Open a recipe engine for `driver` (sync if it has a sync API), run `sql`, dispose."""
    if drivers.get(driver).supports("sync"):
        engine = create_engine(endpoint, driver, **engine_kwargs)
        try:
            with engine.connect() as conn:
                return conn.scalar(sa.text(sql))
        finally:
            engine.dispose()

    async def attempt() -> Any:
        engine = create_async_engine(endpoint, driver, **engine_kwargs)
        try:
            async with engine.connect() as conn:
                return await conn.scalar(sa.text(sql))
        finally:
            await engine.dispose()

    return asyncio.run(attempt())


# PostgreSQL's default search_path, as `SHOW search_path` reports it.
DEFAULT_PATH = '"$user", public'


def own_error(error: sa.exc.DBAPIError) -> BaseException:
    """The driver's own exception (SQLAlchemy's asyncpg adapter wraps it once more)."""
    orig = error.orig
    assert orig is not None
    return orig.__cause__ if orig.__cause__ is not None else orig


def dotted_name(error: BaseException) -> str:
    """`module.QualName` of an exception's class, e.g. 'psycopg.errors.QueryCanceled'."""
    return f"{type(error).__module__}.{type(error).__qualname__}"
