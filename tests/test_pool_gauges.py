"""Prometheus pool gauges (`register_pool_gauges`), on a real server: what a scrape reports
while connections are checked out, after dispose() replaced the pool, for several async engines
on one registry, and once an engine is dropped; and the errors for a pool without counts or a
missing prometheus_client.
"""

from __future__ import annotations

import contextlib
import gc
import sys
from typing import TYPE_CHECKING

import pytest
import sqlalchemy as sa

from pytest_pgtopo import Endpoint, create_async_engine, create_engine, drivers
from pytest_pgtopo.recipes.pool_metrics import register_pool_gauges

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry


@pytest.fixture
def registry() -> CollectorRegistry:
    """A fresh registry, not the global one (skips when the `prometheus` extra is missing)."""
    pytest.importorskip("prometheus_client")
    from prometheus_client import CollectorRegistry

    return CollectorRegistry()


def _scrape(registry: CollectorRegistry, engine: str) -> dict[str, float]:
    """Scrape the registry as Prometheus would and read `engine`'s pool gauges."""
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    text = generate_latest(registry).decode()
    return {
        sample.name.removeprefix("sqlalchemy_pool_"): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("sqlalchemy_pool_") and sample.labels == {"engine": engine}
    }


def test_pool_gauges_follow_checkouts(
    pg_plain_database: Endpoint, registry: CollectorRegistry
) -> None:
    engine = create_engine(pg_plain_database, "psycopg", pool_size=2, max_overflow=3)
    register_pool_gauges(engine, registry, name="orders")
    try:
        # SQLAlchemy's own overflow() is negative until pool_size connections were opened.
        assert engine.pool.overflow() == -2  # type: ignore[attr-defined]
        idle = {"size": 2, "checked_out": 0, "checked_in": 0, "overflow": 0}
        assert _scrape(registry, "orders") == idle
        with contextlib.ExitStack() as stack:
            for _ in range(4):
                stack.enter_context(engine.connect()).execute(sa.text("SELECT 1"))
            busy = {"size": 2, "checked_out": 4, "checked_in": 0, "overflow": 2}
            assert _scrape(registry, "orders") == busy
        # The two overflow connections are closed, pool_size stay open and idle.
        released = {"size": 2, "checked_out": 0, "checked_in": 2, "overflow": 0}
        assert _scrape(registry, "orders") == released
    finally:
        engine.dispose()


def test_pool_gauges_follow_the_new_pool_after_dispose(
    pg_plain_database: Endpoint, registry: CollectorRegistry
) -> None:
    """dispose() replaces engine.pool: a collector that kept the old pool would report zeros."""
    engine = create_engine(pg_plain_database, "psycopg", pool_size=2, max_overflow=3)
    register_pool_gauges(engine, registry, name="orders")
    old_pool = engine.pool
    engine.dispose()
    try:
        with engine.connect():
            assert engine.pool is not old_pool
            assert old_pool.checkedout() == 0  # type: ignore[attr-defined]
            assert _scrape(registry, "orders")["checked_out"] == 1
    finally:
        engine.dispose()


async def test_pool_gauges_of_async_engines_share_a_registry(
    pg_plain_database: Endpoint, registry: CollectorRegistry
) -> None:
    driver = "asyncpg" if drivers.get("asyncpg").is_installed() else "psycopg"
    reads = create_async_engine(pg_plain_database, driver, pool_size=2, max_overflow=3)
    writes = create_async_engine(pg_plain_database, driver, pool_size=5, max_overflow=0)
    register_pool_gauges(reads, registry, name="reads")
    register_pool_gauges(writes, registry, name="writes")
    with pytest.raises(ValueError, match="'reads' already has pool gauges"):
        register_pool_gauges(writes, registry, name="reads")
    try:
        async with contextlib.AsyncExitStack() as stack:
            for _ in range(3):
                await stack.enter_async_context(reads.connect())
            assert _scrape(registry, "reads") == {
                "size": 2,
                "checked_out": 3,
                "checked_in": 0,
                "overflow": 1,
            }
            assert _scrape(registry, "writes")["size"] == 5
            assert _scrape(registry, "writes")["checked_out"] == 0
    finally:
        await reads.dispose()
        await writes.dispose()


def test_pool_gauges_hold_the_engine_weakly(
    pg_plain_database: Endpoint, registry: CollectorRegistry
) -> None:
    """A dropped engine's series leave the scrape, and its name can be used again."""
    engine = create_engine(pg_plain_database, "psycopg")
    register_pool_gauges(engine, registry, name="orders")
    assert _scrape(registry, "orders")["size"] == 5
    del engine
    gc.collect()
    assert _scrape(registry, "orders") == {}
    again = create_engine(pg_plain_database, "psycopg", pool_size=1)
    register_pool_gauges(again, registry, name="orders")
    assert _scrape(registry, "orders")["size"] == 1


def test_pool_gauges_refuse_a_pool_without_counts(
    pg_plain_database: Endpoint, registry: CollectorRegistry
) -> None:
    engine = create_engine(pg_plain_database, "psycopg", poolclass=sa.NullPool)
    with pytest.raises(TypeError, match="need a QueuePool; engine 'default' uses NullPool"):
        register_pool_gauges(engine, registry)


def test_missing_prometheus_client_names_the_extra(
    pg_plain_database: Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    engine = create_engine(pg_plain_database, "psycopg")
    with pytest.raises(ImportError, match=r"pip install 'pytest-pgtopo\[prometheus\]'"):
        register_pool_gauges(engine)
