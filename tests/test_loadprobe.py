"""The load probe: what it measures on a real fault, and how it refuses an unreachable engine."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from pytest_pgtopo import (
    Endpoint,
    LoadProbe,
    LoadProbeError,
    create_async_engine,
    create_engine,
)
from pytest_pgtopo.loadprobe.report import Failure, _window
from pytest_pgtopo.servers.process import free_port
from pytest_pgtopo.topologies.proxied import ProxiedEndpoint

from .support import wait_for


def test_the_error_window_runs_from_the_first_failure_to_the_next_success() -> None:
    failures = [
        Failure(1.0, "E", None, ""),
        Failure(1.2, "E", None, ""),
        Failure(3.0, "E", None, ""),
    ]
    acked = [(1, 0.5), (2, 1.5), (3, 3.5)]
    assert _window(failures, acked, first=True) == pytest.approx(0.5)
    assert _window(failures, acked, first=False) == pytest.approx(2.5)  # The whole outage.
    assert _window([], acked, first=True) is None


def test_a_probe_on_an_unreachable_engine_says_so_and_leaves_nothing_running(
    pg_plain_database: Endpoint,
) -> None:
    nowhere = Endpoint("127.0.0.1", free_port(), "u", "p", "db")
    engine = create_engine(nowhere, "psycopg")
    before = threading.active_count()
    with pytest.raises(LoadProbeError, match=r"cannot reach its server.*OperationalError"):
        LoadProbe(engine).__enter__()
    assert threading.active_count() == before
    engine.dispose()


def test_a_refused_then_restored_server_gives_a_measured_window_and_no_loss(
    pg_sync_engine: sa.Engine,
    pg_fault_proxy: Callable[[Endpoint], ProxiedEndpoint],
    pg_plain_database: Endpoint,
    pgtopo_driver: str,
) -> None:
    faulty = pg_fault_proxy(pg_plain_database)
    engine = create_engine(faulty.endpoint, pgtopo_driver)
    try:
        with LoadProbe(engine, readers=1) as probe:
            probe.wait_for_acks(10)
            faulty.refuse()
            faulty.cut()  # Pooled connections die; new ones are refused.
            wait_for(lambda: len(probe.failures) >= 3, "the probe to see the outage")
            restored_at = probe.now()
            faulty.restore()
            probe.wait_recovered()
        report = probe.report()
    finally:
        engine.dispose()
    print(f"{pgtopo_driver}: {report.describe()}")
    assert report.lost == []
    assert report.error_window is not None
    assert report.outage is not None
    assert report.failures[0].at + report.outage >= restored_at  # It lasted until restore().
    assert sum(report.errors_by_class.values()) == len(report.failures)
    assert report.reads > 0


async def test_async_probe_measures_a_cut(
    pg_engine: AsyncEngine,
    pg_fault_proxy: Callable[[Endpoint], ProxiedEndpoint],
    pg_plain_database: Endpoint,
    pgtopo_driver: str,
) -> None:
    faulty = pg_fault_proxy(pg_plain_database)
    engine = create_async_engine(faulty.endpoint, pgtopo_driver)
    try:
        async with LoadProbe(engine) as probe:
            await probe.await_acks(10)
            faulty.refuse()
            faulty.cut()
            await probe._await(lambda: len(probe.failures) >= 3, 30, "no failures seen")
            faulty.restore()
            await probe.await_recovered()
        report = await probe.areport()
    finally:
        await engine.dispose()
    print(f"{pgtopo_driver}: {report.describe()}")
    assert report.lost == []
    assert report.error_window is not None
