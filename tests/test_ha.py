"""pg_ha: a real HAProxy routing by agent-check; switchover and crash under load, per driver
and path (HAProxy's endpoint, the multi-host URL)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from pytest_pgtopo import (
    BinaryNotFoundError,
    Endpoint,
    HaTopology,
    LoadProbe,
    ProbeReport,
)
from pytest_pgtopo.backends.local import LocalBackend
from pytest_pgtopo.servers import haproxy

from .support import query_once

PORT = "SELECT inet_server_port()"


# --- the topology ----------------------------------------------------------------------------


def test_haproxy_routes_by_what_each_node_says(pg_ha: HaTopology) -> None:
    assert pg_ha.routes() == {"primary": ["pg1"], "read": ["pg2"]}
    assert query_once(pg_ha.primary_endpoint, "psycopg", PORT) == pg_ha.primary.port
    assert query_once(pg_ha.read_endpoint, "psycopg", PORT) == pg_ha.replica.port
    assert all(responder.answers > 0 for responder in pg_ha.responders)  # HAProxy is asking.


def test_promotion_moves_the_route_without_telling_haproxy(pg_ha: HaTopology) -> None:
    pg_ha.stop_primary()
    pg_ha.promote()
    pg_ha.wait_for_routing()
    assert pg_ha.routes() == {"primary": ["pg2"], "read": []}
    assert query_once(pg_ha.primary_endpoint, "pg8000", PORT) == pg_ha.replica.port


def test_ha_sync_engine_is_on_this_tests_database_through_haproxy(
    ha_sync_engine: sa.Engine, pg_ha: HaTopology, pg_ha_database: Endpoint
) -> None:
    with ha_sync_engine.connect() as conn:
        assert conn.scalar(sa.text("SELECT current_database()")) == pg_ha_database.dbname
        assert conn.scalar(sa.text(PORT)) == pg_ha.primary.port
    assert ha_sync_engine.url.port == pg_ha.primary_endpoint.port


async def test_ha_engine_is_on_this_tests_database_through_haproxy(
    ha_engine: AsyncEngine, pg_ha: HaTopology, pg_ha_database: Endpoint
) -> None:
    async with ha_engine.connect() as conn:
        assert await conn.scalar(sa.text("SELECT current_database()")) == pg_ha_database.dbname
    assert ha_engine.url.port == pg_ha.primary_endpoint.port


# --- failover under load ---------------------------------------------------------------------


def _fail_over(pg_ha: HaTopology, probe: LoadProbe, kind: str) -> float:
    """Fail over under the probe's load; returns when the old primary was gone (probe time)."""
    if kind == "switchover":
        probe.pause()
        pg_ha.wait_for_replay()
        pg_ha.stop_primary("fast")
        gone = probe.now()
        pg_ha.promote()
        pg_ha.wait_for_routing()
        probe.resume()
    else:
        pg_ha.wait_for_replay()  # Steady state first: the probe's table exists on the standby.
        pg_ha.stop_primary("immediate")
        gone = probe.now()
        pg_ha.promote()  # What Patroni does once the primary's leader key expires.
        pg_ha.wait_for_routing()
    return gone


def _assert_report(probe: LoadProbe, report: ProbeReport, kind: str, fault_at: float) -> None:
    print(f"{kind}: {report.describe()}")
    after = [at for _, at in probe.acked if at > fault_at]
    assert len(after) >= 5, report.describe()  # Writing again, on the new primary.
    if kind == "switchover":
        assert report.lost == [], report.describe()  # Planned: nothing acknowledged is lost.
    else:
        # A crash may lose what the standby had not received (asynchronous replication), but
        # only writes acknowledged before the primary was gone.
        crashed = {ident for ident, at in probe.acked if at <= fault_at}
        assert set(report.lost) <= crashed, report.describe()
    if report.error_window is not None:
        assert report.error_window < 30, report.describe()


@pytest.mark.parametrize("kind", ["switchover", "crash"])
def test_failover_through_haproxy_under_load(
    ha_sync_engine: sa.Engine,
    pg_ha: HaTopology,
    kind: str,
    pg_load_probe: Callable[..., LoadProbe],
) -> None:
    with pg_load_probe(ha_sync_engine) as probe:
        probe.wait_for_acks(20)
        fault_at = _fail_over(pg_ha, probe, kind)
        probe.wait_recovered()
    _assert_report(probe, probe.report(), kind, fault_at)
    with ha_sync_engine.connect() as conn:
        assert conn.scalar(sa.text(PORT)) == pg_ha.replica.port  # The promoted node.


@pytest.mark.parametrize("kind", ["switchover", "crash"])
def test_failover_through_the_multi_host_url_under_load(
    ha_failover_sync_engine: sa.Engine, pg_ha: HaTopology, kind: str
) -> None:
    with LoadProbe(ha_failover_sync_engine) as probe:
        probe.wait_for_acks(20)
        fault_at = _fail_over(pg_ha, probe, kind)
        probe.wait_recovered()
    _assert_report(probe, probe.report(), kind, fault_at)


async def _async_fail_over(pg_ha: HaTopology, probe: LoadProbe, kind: str) -> float:
    await probe.await_acks(20)
    if kind == "switchover":
        await probe.apause()
    # In a thread: the event loop, and the probe's writer on it, keep running meanwhile.
    fault_at = await asyncio.to_thread(_fail_over, pg_ha, probe, kind)
    await probe.await_recovered()
    return fault_at


@pytest.mark.parametrize("kind", ["switchover", "crash"])
async def test_async_failover_through_haproxy_under_load(
    ha_engine: AsyncEngine, pg_ha: HaTopology, kind: str
) -> None:
    async with LoadProbe(ha_engine) as probe:
        fault_at = await _async_fail_over(pg_ha, probe, kind)
    _assert_report(probe, await probe.areport(), kind, fault_at)


@pytest.mark.parametrize("kind", ["switchover", "crash"])
async def test_async_failover_through_the_multi_host_url_under_load(
    ha_failover_engine: AsyncEngine, pg_ha: HaTopology, kind: str
) -> None:
    async with LoadProbe(ha_failover_engine) as probe:
        fault_at = await _async_fail_over(pg_ha, probe, kind)
    _assert_report(probe, await probe.areport(), kind, fault_at)


def test_without_haproxy_the_topology_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # No haproxy on PATH ...
    monkeypatch.setattr(haproxy, "WELL_KNOWN", ())  # ... nor where Debian puts it.
    reason = LocalBackend(tmp_root=tmp_path).unavailable("ha")
    assert reason is not None
    assert "apt-get install haproxy" in reason
    with pytest.raises(BinaryNotFoundError, match="apt-get install haproxy"):
        haproxy.find_haproxy()
