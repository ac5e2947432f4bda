"""The repository layer: all SQL of the app lives here, in an async and a sync flavour."""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy import Engine, func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.orm import sessionmaker

from .models import Order


class OrderRepository:
    """Async repository, as a FastAPI-style service would use it."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)

    async def place(self, customer: str, total: Decimal) -> Order:
        async with self._sessions.begin() as session:
            order = Order(customer=customer, total=total)
            session.add(order)
        return order

    async def open_orders(self, customer: str) -> list[Order]:
        async with self._sessions() as session:
            query = select(Order).where(Order.customer == customer, Order.status == "open")
            return list((await session.scalars(query.order_by(Order.id))).all())

    async def close_all(self, customer: str) -> int:
        async with self._sessions.begin() as session:
            result = await session.execute(
                update(Order).where(Order.customer == customer).values(status="closed")
            )
            return int(result.rowcount)  # type: ignore[attr-defined]


class ReportRepository:
    """Sync repository, as a batch job or admin script would use it."""

    def __init__(self, engine: Engine) -> None:
        self._sessions = sessionmaker(engine)

    def revenue(self, customer: str) -> Decimal:
        with self._sessions() as session:
            query = select(func.coalesce(func.sum(Order.total), 0)).where(
                Order.customer == customer
            )
            return Decimal(session.scalar(query) or 0)
