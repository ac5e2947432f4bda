"""The orders app's repository layer, tested against a real PostgreSQL per test."""

from decimal import Decimal

import pytest
import sqlalchemy as sa
from orders.repository import OrderRepository, ReportRepository
from sqlalchemy.ext.asyncio import AsyncEngine


async def test_place_and_list_open_orders(pg_engine: AsyncEngine) -> None:
    repo = OrderRepository(pg_engine)
    await repo.place("ada", Decimal("12.50"))
    await repo.place("ada", Decimal("7.25"))
    await repo.place("bob", Decimal("1.00"))
    assert [o.total for o in await repo.open_orders("ada")] == [Decimal("12.50"), Decimal("7.25")]


async def test_each_test_starts_from_an_empty_schema(pg_engine: AsyncEngine) -> None:
    assert await OrderRepository(pg_engine).open_orders("ada") == []


async def test_closing_orders(pg_engine: AsyncEngine) -> None:
    repo = OrderRepository(pg_engine)
    await repo.place("ada", Decimal("3"))
    assert await repo.close_all("ada") == 1
    assert await repo.open_orders("ada") == []


async def test_database_enforces_the_check_constraint(pg_engine: AsyncEngine) -> None:
    with pytest.raises(sa.exc.IntegrityError, match="total_not_negative"):
        await OrderRepository(pg_engine).place("ada", Decimal("-1"))


async def test_sync_report_sees_async_writes(
    pg_engine: AsyncEngine, pg_sync_engine: sa.Engine
) -> None:
    await OrderRepository(pg_engine).place("ada", Decimal("10.00"))
    await OrderRepository(pg_engine).place("ada", Decimal("2.50"))
    assert ReportRepository(pg_sync_engine).revenue("ada") == Decimal("12.50")


def test_statement_timeout_protects_the_app(pg_sync_engine: sa.Engine) -> None:
    # The recipe sets a statement_timeout on every connection; a runaway query is cancelled.
    with pg_sync_engine.connect() as conn:
        assert conn.scalar(sa.text("SHOW statement_timeout")) == "30s"
        conn.execute(sa.text("SET statement_timeout = '100ms'"))  # shortened to keep the test fast
        with pytest.raises(sa.exc.DBAPIError, match="statement timeout"):
            conn.execute(sa.text("SELECT pg_sleep(5)"))
