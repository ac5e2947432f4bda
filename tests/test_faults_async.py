"""PostgreSQL's own faults on async engines (asyncpg, psycopg async): the driver's real error
and the recipe that rides it out."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from pytest_pgtopo import ClientOptions, Endpoint, PlainTopology, create_async_engine
from pytest_pgtopo.loadprobe import classify
from pytest_pgtopo.topologies.proxied import ProxiedEndpoint

from .support import wait_for

PID = sa.text("SELECT pg_backend_pid()")


async def _terminated_then_reused(
    endpoint: Endpoint, driver: str, pg_plain: PlainTopology, **kw: Any
) -> BaseException | None:
    engine = create_async_engine(endpoint, driver, pool_size=1, max_overflow=0, **kw)
    try:
        async with engine.connect() as conn:
            pid = await conn.scalar(PID)
        pg_plain.server.admin.scalar(f"SELECT pg_terminate_backend({pid})")
        gone = f"SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = {pid}"
        wait_for(lambda: bool(pg_plain.server.admin.scalar(gone)), f"backend {pid} to exit")
        error = None
        try:
            async with engine.connect() as conn:
                await conn.scalar(PID)
        except sa.exc.DBAPIError as exc:
            error = exc
        async with engine.connect() as conn:  # A retry always gets a new connection.
            assert await conn.scalar(PID) != pid
        return error
    finally:
        await engine.dispose()


async def test_admin_shutdown_57p01_and_pool_pre_ping(
    pg_engine: AsyncEngine, pg_plain: PlainTopology, pg_plain_database: Endpoint, pgtopo_driver: str
) -> None:
    raw = await _terminated_then_reused(
        pg_plain_database, pgtopo_driver, pg_plain, pool_pre_ping=False
    )
    assert isinstance(raw, sa.exc.DBAPIError)
    print(f"{pgtopo_driver}: 57P01 without pre-ping -> {classify(raw)}")
    assert raw.connection_invalidated
    assert await _terminated_then_reused(pg_plain_database, pgtopo_driver, pg_plain) is None


async def test_network_black_hole_until_a_client_deadline_fires(
    pg_engine: AsyncEngine,
    pg_fault_proxy: Callable[[Endpoint], ProxiedEndpoint],
    pg_plain_database: Endpoint,
    pgtopo_driver: str,
) -> None:
    faulty = pg_fault_proxy(pg_plain_database)
    client = ClientOptions(connect_timeout=2, command_timeout=0.5)
    engine = create_async_engine(faulty.endpoint, pgtopo_driver, client=client)
    try:
        async with engine.connect() as conn:
            await conn.scalar(sa.text("SELECT 1"))
            faulty.proxy.swallow()
            started = asyncio.get_running_loop().time()
            query = asyncio.ensure_future(conn.scalar(sa.text("SELECT 1")))
            done, _ = await asyncio.wait({query}, timeout=0.3)
            assert not done  # It hangs: nothing comes back, nothing is closed.
            if pgtopo_driver != "asyncpg":
                # psycopg has no client-side statement deadline, and cancelling the task (a
                # deadline around the call) makes it send a cancel request, which the black hole
                # swallows too: measured ~10 s more. Only ending the socket frees it at once.
                faulty.cut()
            done, _ = await asyncio.wait({query}, timeout=30)
            assert done
            error = query.exception()
            waited = asyncio.get_running_loop().time() - started
            print(f"{pgtopo_driver} black hole -> {classify(error)} after {waited:.2f} s")
            assert error is not None
            if pgtopo_driver == "asyncpg":  # command_timeout is the recipe: it fired.
                assert classify(error)[0] == "builtins.TimeoutError"
            faulty.cut()  # What is left of the connection goes; the pool discards it.
            await conn.invalidate()
    finally:
        faulty.proxy.restore()
        await engine.dispose()
