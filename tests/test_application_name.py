"""application_name, for every driver: distinct names tell engines apart in pg_stat_activity,
and a generic name (a driver's or a tool's default) draws a PgtopoWarning but is still used.
"""

from __future__ import annotations

import warnings

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from pytest_pgtopo import (
    Endpoint,
    PgtopoWarning,
    SessionSettings,
    create_async_engine,
    create_engine,
)

NAMES = ("orders-api", "billing-worker")
ACTIVITY = sa.text(
    "SELECT pid, application_name FROM pg_stat_activity"
    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
)


def test_application_names_tell_engines_apart(
    pg_sync_engine: sa.Engine, pg_plain_database: Endpoint, pgtopo_driver: str
) -> None:
    engines = [
        create_engine(
            pg_plain_database, pgtopo_driver, settings=SessionSettings(application_name=n)
        )
        for n in NAMES
    ]
    try:
        conns = [engine.connect() for engine in engines]
        pids = {
            conn.scalar(sa.text("SELECT pg_backend_pid()")): n
            for conn, n in zip(conns, NAMES, strict=True)
        }
        with pg_sync_engine.connect() as observer:  # A third connection.
            assert {pid: name for pid, name in observer.execute(ACTIVITY)} == pids
        for conn in conns:
            conn.close()
    finally:
        for engine in engines:
            engine.dispose()


async def test_async_application_names_tell_engines_apart(
    pg_engine: AsyncEngine, pg_plain_database: Endpoint, pgtopo_driver: str
) -> None:
    engines = [
        create_async_engine(
            pg_plain_database, pgtopo_driver, settings=SessionSettings(application_name=n)
        )
        for n in NAMES
    ]
    try:
        pids = {}
        for engine, name in zip(engines, NAMES, strict=True):
            conn = await engine.connect()
            pids[await conn.scalar(sa.text("SELECT pg_backend_pid()"))] = (name, conn)
        async with pg_engine.connect() as observer:
            seen = {pid: name for pid, name in await observer.execute(ACTIVITY)}
        assert seen == {pid: name for pid, (name, _) in pids.items()}
        for _, conn in pids.values():
            await conn.close()
    finally:
        for engine in engines:
            await engine.dispose()


def test_generic_application_name_warns_and_a_distinct_one_does_not(
    pg_sync_engine: sa.Engine, pg_plain_database: Endpoint, pgtopo_driver: str
) -> None:
    with pytest.warns(PgtopoWarning, match="'sqlalchemy' is generic: name the service") as record:
        generic = create_engine(
            pg_plain_database,
            pgtopo_driver,
            settings=SessionSettings(application_name="sqlalchemy"),
        )
    assert record[0].filename == __file__, "the warning points at the caller's line"
    with warnings.catch_warnings():
        warnings.simplefilter("error", PgtopoWarning)
        distinct = create_engine(
            pg_plain_database,
            pgtopo_driver,
            settings=SessionSettings(application_name="orders-api"),
        )
    try:
        for engine, name in ((generic, "sqlalchemy"), (distinct, "orders-api")):
            with engine.connect() as conn:  # A warning, not a refusal: the name is used.
                assert conn.scalar(sa.text("SHOW application_name")) == name
    finally:
        generic.dispose()
        distinct.dispose()
