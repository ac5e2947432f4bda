"""The engine recipes: every connection setting reaches the server, for every driver.

Run with `--pgtopo-driver all` (as .ci/run does) to cover every driver; each test runs once per
installed driver that can back its engines.
"""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from pytest_pgtopo import (
    ClientOptions,
    Endpoint,
    SessionSettings,
    create_async_engine,
    create_engine,
)

SETTINGS = SessionSettings(
    application_name="orders-api test",
    timezone="Asia/Tokyo",
    search_path='"$user", tenant_a, public',
    statement_timeout=1500,
    idle_in_transaction_session_timeout="45s",
    lock_timeout=2000,
)
EXPECTED = {
    "application_name": "orders-api test",
    "TimeZone": "Asia/Tokyo",
    "search_path": '"$user", tenant_a, public',
    "statement_timeout": "1500ms",
    "idle_in_transaction_session_timeout": "45s",
    "lock_timeout": "2s",
}
SHOW_ALL = sa.text(
    "SELECT " + ", ".join(f"current_setting('{name}') AS \"{name}\"" for name in EXPECTED)
)


@pytest.fixture
def pgtopo_settings() -> SessionSettings:
    return SETTINGS


def test_sync_settings_reach_the_server(pg_sync_engine: sa.Engine, pgtopo_driver: str) -> None:
    with pg_sync_engine.connect() as conn:
        row = conn.execute(SHOW_ALL).mappings().one()
        assert dict(row) == EXPECTED, pgtopo_driver


async def test_async_settings_reach_the_server(pg_engine: AsyncEngine, pgtopo_driver: str) -> None:
    async with pg_engine.connect() as conn:
        row = (await conn.execute(SHOW_ALL)).mappings().one()
        assert dict(row) == EXPECTED, pgtopo_driver


def test_default_application_name_names_the_test(
    pg_plain_database: Endpoint, pgtopo_driver: str, pg_sync_engine: sa.Engine
) -> None:
    engine = create_engine(pg_plain_database, pgtopo_driver)
    try:
        with engine.connect() as conn:
            assert conn.scalar(sa.text("SHOW application_name")) == "pytest-pgtopo"
    finally:
        engine.dispose()


PREPARED_COUNT = sa.text("SELECT count(*) FROM pg_prepared_statements")


@pytest.mark.parametrize("prepared", [True, False], ids=["cache-on", "cache-off"])
async def test_async_statement_cache_switch(
    pg_engine: AsyncEngine, pg_plain_database: Endpoint, pgtopo_driver: str, prepared: bool
) -> None:
    """prepared_statements=False leaves no named prepared statement on the server."""
    engine = create_async_engine(
        pg_plain_database, pgtopo_driver, client=ClientOptions(prepared_statements=prepared)
    )
    try:
        async with engine.connect() as conn:
            for value in range(8):  # psycopg prepares after 5 executions (prepare_threshold).
                await conn.execute(sa.text("SELECT CAST(:v AS int) + 1"), {"v": value})
            count = await conn.scalar(PREPARED_COUNT)
        assert (count > 0) is prepared, f"{pgtopo_driver}: {count} prepared statements"
    finally:
        await engine.dispose()


@pytest.mark.parametrize("pgtopo_driver", ["asyncpg"])  # A client-side timeout only asyncpg has.
@pytest.mark.usefixtures("pg_engine")
async def test_asyncpg_command_timeout_cancels_client_side(
    pg_plain_database: Endpoint, pgtopo_driver: str
) -> None:
    engine = create_async_engine(
        pg_plain_database, "asyncpg", client=ClientOptions(command_timeout=0.3)
    )
    try:
        async with engine.connect() as conn:
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await conn.execute(sa.text("SELECT pg_sleep(20)"))
            assert time.monotonic() - started < 15
    finally:
        await engine.dispose()


def test_engine_arguments_are_inspectable() -> None:
    from pytest_pgtopo import engine_arguments

    endpoint = Endpoint("127.0.0.1", 5432, "app", "secret", "orders")
    url, kwargs = engine_arguments(
        endpoint,
        "psycopg",
        "sync",
        settings=SessionSettings(application_name="orders", search_path="a, b"),
        client=ClientOptions(prepared_statements=False),
        engine_kwargs={"pool_size": 3},
    )
    assert url.render_as_string(hide_password=False) == (
        "postgresql+psycopg://app:secret@127.0.0.1:5432/orders?sslmode=disable"
    )
    assert kwargs["pool_size"] == 3
    assert kwargs["pool_pre_ping"] is True
    args = kwargs["connect_args"]
    assert args["application_name"] == "orders"
    assert args["prepare_threshold"] is None
    assert r"-c search_path=a,\ b" in args["options"]


def test_durable_settings_sql_quotes_lists_and_values() -> None:
    from pytest_pgtopo import durable_settings_sql

    settings = SessionSettings(search_path='"$user", tenant_a', statement_timeout="5s")
    assert durable_settings_sql(settings, role="app", database="orders") == [
        'ALTER ROLE "app" IN DATABASE "orders" SET TimeZone = \'UTC\'',
        'ALTER ROLE "app" IN DATABASE "orders" SET search_path = "$user", "tenant_a"',
        'ALTER ROLE "app" IN DATABASE "orders" SET statement_timeout = \'5s\'',
        'ALTER ROLE "app" IN DATABASE "orders" SET idle_in_transaction_session_timeout = \'60000\'',
    ]
    with pytest.raises(ValueError, match="name a database, a role, or both"):
        durable_settings_sql(settings)


def test_empty_application_name_is_refused() -> None:
    with pytest.raises(ValueError, match="application_name is empty"):
        SessionSettings(application_name="  ")


@pytest.mark.parametrize("name", ["python", "SQLAlchemy", "asyncpg"])
def test_generic_application_name_warns(name: str) -> None:
    from pytest_pgtopo import PgtopoWarning

    with pytest.warns(PgtopoWarning, match="is generic: name the service"):
        SessionSettings(application_name=name)
