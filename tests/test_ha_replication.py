"""Synchronous vs asynchronous replication under a crash, and rejoin with pg_rewind vs rebuild."""

from __future__ import annotations

import asyncio
import time

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from pytest_pgtopo import HaTopology, LoadProbe, PgtopoError, create_engine
from pytest_pgtopo.session import PgtopoSession

from .support import query_once, wait_for

SYNC_COMMIT = sa.text("SHOW synchronous_commit")


def _crash(pg_ha: HaTopology, probe: LoadProbe) -> float:
    """Crash the primary, promote the standby; the probe time when the primary was gone."""
    pg_ha.stop_primary("immediate")
    gone = probe.now()
    pg_ha.promote()
    pg_ha.wait_for_routing()
    return gone


# --- synchronous: a crash loses no acknowledged write ------------------------------------------


def test_synchronous_replication_loses_nothing_in_a_crash(
    ha_sync_engine: sa.Engine, pg_ha: HaTopology
) -> None:
    pg_ha.set_synchronous("ha-replica")
    with ha_sync_engine.connect() as conn:
        assert conn.scalar(SYNC_COMMIT) == "on"
    with LoadProbe(ha_sync_engine) as probe:
        probe.wait_for_acks(30)
        _crash(pg_ha, probe)
        probe.wait_recovered()
    report = probe.report()
    print(f"sync crash: {report.describe()}")
    assert report.acknowledged >= 35
    assert report.lost == [], report.describe()


async def test_async_engine_synchronous_replication_loses_nothing_in_a_crash(
    ha_engine: AsyncEngine, pg_ha: HaTopology
) -> None:
    pg_ha.set_synchronous("ha-replica")
    async with LoadProbe(ha_engine) as probe:
        await probe.await_acks(30)
        await asyncio.to_thread(_crash, pg_ha, probe)
        await probe.await_recovered()
    report = await probe.areport()
    print(f"sync crash: {report.describe()}")
    assert report.lost == [], report.describe()


# --- asynchronous, replication held back: the loss is measured ---------------------------------


def test_asynchronous_replication_held_back_loses_what_the_standby_never_got(
    ha_sync_engine: sa.Engine, pg_ha: HaTopology
) -> None:
    with LoadProbe(ha_sync_engine) as probe:
        probe.wait_for_acks(10)
        pg_ha.wait_for_replay()
        pg_ha.hold_back_replication()
        held = probe.now()
        probe.wait_for_acks(20)
        gone = _crash(pg_ha, probe)
        probe.wait_recovered()
    report = probe.report()
    print(f"async crash, replication held back: {report.describe()}")
    unsent = {ident for ident, at in probe.acked if held < at <= gone}
    assert len(unsent) >= 20
    # Every write acknowledged while the standby received nothing is gone: the point of the test.
    assert unsent <= set(report.lost), report.describe()
    assert set(report.lost) <= {ident for ident, at in probe.acked if at <= gone}


def test_a_synchronous_standby_name_that_does_not_exist_is_refused(
    ha_sync_engine: sa.Engine, pg_ha: HaTopology
) -> None:
    with pytest.raises(PgtopoError, match=r"'ghost' names no connected standby.*ha-replica"):
        pg_ha.set_synchronous("ghost")
    with ha_sync_engine.begin() as conn:  # Nothing changed: commits do not wait forever.
        assert conn.scalar(SYNC_COMMIT) == "off"
        conn.execute(sa.text("CREATE TABLE t (id int)"))


# --- rejoin: pg_rewind against a full rebuild --------------------------------------------------


def test_rejoin_with_pg_rewind_makes_the_pair_whole_without_a_rebuild(
    pg_ha: HaTopology, pgtopo_session: PgtopoSession
) -> None:
    pg_ha.crash_failover()
    new_primary = pg_ha.replica.port
    engine = create_engine(pg_ha.primary_endpoint, "psycopg")
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE after_failover AS SELECT 1 AS x"))
    engine.dispose()

    started = time.monotonic()
    pg_ha.rejoin()
    rejoin_s = time.monotonic() - started
    assert pg_ha.routes() == {"primary": ["pg2"], "read": ["pg1"]}
    assert query_once(pg_ha.read_endpoint, "psycopg", "SELECT inet_server_port()") == (
        pg_ha.primary.port
    )
    wait_for(  # The rejoined node streams from the new primary: what it wrote arrives.
        lambda: query_once(
            pg_ha.read_endpoint, "psycopg", "SELECT to_regclass('after_failover') IS NOT NULL"
        ),
        "the rejoined node to replay the new primary's writes",
    )
    assert query_once(pg_ha.primary_endpoint, "psycopg", "SELECT inet_server_port()") == (
        new_primary
    )

    started = time.monotonic()
    pgtopo_session.restore_replica_pairs()  # What the next test would get: rebuild().
    rebuild_s = time.monotonic() - started
    print(f"rejoin (pg_rewind) {rejoin_s:.2f} s, rebuild {rebuild_s:.2f} s")
    assert pg_ha.routes() == {"primary": ["pg1"], "read": ["pg2"]}
