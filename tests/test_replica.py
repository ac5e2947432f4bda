"""Primary + streaming replica: read/write split, real lag, promotion and failover, per driver."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from pytest_pgtopo import DriverUnsupportedError, Endpoint, create_engine, drivers
from pytest_pgtopo.topologies.replica import ReplicaTopology

from .support import query_once, wait_for

METADATA = sa.MetaData()
sa.Table(
    "events", METADATA, sa.Column("id", sa.Integer, primary_key=True), sa.Column("note", sa.Text)
)
INSERT = sa.text("INSERT INTO events (note) VALUES (:note)")
NOTES = sa.text("SELECT note FROM events ORDER BY id")
WHERE_AM_I = sa.text("SELECT current_setting('port')::int, pg_is_in_recovery()")
MULTI_HOST = sorted(name for name, spec in drivers.DRIVERS.items() if spec.multi_host)


@pytest.fixture(scope="module")
def pgtopo_schema() -> sa.MetaData:
    return METADATA


# --- read/write split -------------------------------------------------------------------------


def test_sync_write_through_the_replica_engine_is_refused(
    replica_sync_engine: sa.Engine, pgtopo_driver: str
) -> None:
    with (
        pytest.raises(sa.exc.DBAPIError, match="read-only transaction"),
        replica_sync_engine.begin() as conn,
    ):
        conn.execute(INSERT, {"note": "nope"})
    # Not only the engine's guard: the standby itself refuses to leave read-only mode.
    with (
        pytest.raises(sa.exc.DBAPIError, match="during recovery"),
        replica_sync_engine.begin() as conn,
    ):
        conn.execute(sa.text("SET TRANSACTION READ WRITE"))


async def test_async_write_through_the_replica_engine_is_refused(
    replica_engine: AsyncEngine,
) -> None:
    with pytest.raises(sa.exc.DBAPIError, match="read-only transaction"):
        async with replica_engine.begin() as conn:
            await conn.execute(INSERT, {"note": "nope"})


def test_sync_write_on_primary_is_read_on_replica_after_replay(
    primary_sync_engine: sa.Engine, replica_sync_engine: sa.Engine, pg_replica_pair: ReplicaTopology
) -> None:
    with primary_sync_engine.begin() as conn:
        conn.execute(INSERT, {"note": "hello"})
    pg_replica_pair.wait_for_replay()
    with replica_sync_engine.connect() as conn:
        assert conn.scalars(NOTES).all() == ["hello"]
        assert conn.execute(WHERE_AM_I).one() == (pg_replica_pair.replica.port, True)


async def test_async_write_on_primary_is_read_on_replica_after_replay(
    primary_engine: AsyncEngine, replica_engine: AsyncEngine, pg_replica_pair: ReplicaTopology
) -> None:
    async with primary_engine.begin() as conn:
        await conn.execute(INSERT, {"note": "hello"})
    pg_replica_pair.wait_for_replay()
    async with replica_engine.connect() as conn:
        assert (await conn.scalars(NOTES)).all() == ["hello"]


def test_paused_replay_makes_read_after_write_stale(
    primary_sync_engine: sa.Engine, replica_sync_engine: sa.Engine, pg_replica_pair: ReplicaTopology
) -> None:
    pg_replica_pair.pause_replay()
    try:
        with primary_sync_engine.begin() as conn:
            conn.execute(INSERT, {"note": "fresh"})
        with replica_sync_engine.connect() as conn:
            assert conn.scalars(NOTES).all() == [], "the replica must not see the write yet"
        assert pg_replica_pair.lag() > 0
        assert pg_replica_pair.replay_paused()
    finally:
        pg_replica_pair.resume_replay()
    pg_replica_pair.wait_for_replay()
    # Other WAL (the previous test's database being dropped in the background) may follow the
    # write: lag reaches 0 once the primary is quiet, not necessarily at this very moment.
    wait_for(lambda: pg_replica_pair.lag() == 0, "replica lag to reach 0")
    with replica_sync_engine.connect() as conn:
        assert conn.scalars(NOTES).all() == ["fresh"]


# --- multi-host URLs --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attrs", "lands_on"),
    [("any", "replica"), ("read-write", "primary"), ("primary", "primary"), ("standby", "replica")],
)
@pytest.mark.parametrize("driver", MULTI_HOST)
def test_target_session_attrs_choose_the_node(
    pg_replica_pair: ReplicaTopology, driver: str, attrs: str, lands_on: str
) -> None:
    endpoint = pg_replica_pair.multi_host(attrs)  # replica listed first
    expected = getattr(pg_replica_pair, lands_on).port
    assert query_once(endpoint, driver, "SELECT current_setting('port')::int") == expected


def test_cheatsheet_multi_host_url_form_is_rejected_by_sqlalchemy() -> None:
    cheatsheet = (
        "postgresql+asyncpg://app@primary:5432,replica:5432/db?target_session_attrs=read-write"
    )
    with pytest.raises(ValueError, match="invalid literal for int"):
        sa.make_url(cheatsheet)


def test_working_multi_host_url_form(pg_replica_pair: ReplicaTopology) -> None:
    url = pg_replica_pair.multi_host().url("asyncpg")
    assert url.host is None
    assert url.query["host"] == (
        f"127.0.0.1:{pg_replica_pair.replica.port}",
        f"127.0.0.1:{pg_replica_pair.primary.port}",
    )
    assert url.query["target_session_attrs"] == "read-write"


def test_pg8000_has_no_failover_url(pg_replica_pair: ReplicaTopology) -> None:
    with pytest.raises(DriverUnsupportedError, match="pg8000' supports neither multiple hosts"):
        pg_replica_pair.multi_host().url("pg8000")


# --- failover ---------------------------------------------------------------------------------


def test_failover_engine_and_stable_endpoint_follow_promotion(
    failover_sync_engine: sa.Engine,
    pg_replica_pair: ReplicaTopology,
    pg_replica_database: Endpoint,
    pgtopo_driver: str,
) -> None:
    stable = create_engine(
        pg_replica_pair.stable.with_dbname(pg_replica_database.dbname), pgtopo_driver
    )
    old_primary, new_primary = pg_replica_pair.primary.port, pg_replica_pair.replica.port
    try:
        for engine in (failover_sync_engine, stable):  # Pooled connections to the old primary.
            with engine.begin() as conn:
                assert conn.execute(WHERE_AM_I).one() == (old_primary, False)
                conn.execute(INSERT, {"note": "before"})
        pg_replica_pair.wait_for_replay()
        pg_replica_pair.promote()
        pg_replica_pair.stop_primary()
        for engine in (failover_sync_engine, stable):  # pool_pre_ping replaces the dead ones.
            with engine.begin() as conn:
                assert conn.execute(WHERE_AM_I).one() == (new_primary, False)
                conn.execute(INSERT, {"note": "after"})
        with failover_sync_engine.connect() as conn:
            assert conn.scalars(NOTES).all() == ["before", "before", "after", "after"]
    finally:
        stable.dispose()


async def test_async_failover_engine_follows_promotion(
    failover_engine: AsyncEngine, pg_replica_pair: ReplicaTopology
) -> None:
    async with failover_engine.begin() as conn:
        assert (await conn.execute(WHERE_AM_I)).one() == (pg_replica_pair.primary.port, False)
    new_primary = pg_replica_pair.replica.port
    pg_replica_pair.promote()
    pg_replica_pair.stop_primary("immediate")
    async with failover_engine.begin() as conn:
        assert (await conn.execute(WHERE_AM_I)).one() == (new_primary, False)
        await conn.execute(INSERT, {"note": "after"})


def test_without_pre_ping_a_pooled_connection_fails_after_failover(
    pg_replica_pair: ReplicaTopology, pg_replica_database: Endpoint
) -> None:
    endpoint = pg_replica_pair.stable.with_dbname(pg_replica_database.dbname)
    engine = create_engine(endpoint, "psycopg", pool_pre_ping=False)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        pg_replica_pair.promote()
        pg_replica_pair.stop_primary()
        with pytest.raises(sa.exc.DBAPIError) as info, engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        assert info.value.connection_invalidated
    finally:
        engine.dispose()


# --- destructive tests stay contained ---------------------------------------------------------


def test_a_promotion_does_not_leak_into_the_next_test(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        """
        import sqlalchemy as sa

        def test_1_promotes(pg_replica_pair):
            pg_replica_pair.promote()
            pg_replica_pair.stop_primary("immediate")

        def test_2_gets_a_healthy_pair(pg_replica_pair, primary_sync_engine, replica_sync_engine):
            assert pg_replica_pair.nodes.replica.admin.scalar("SELECT pg_is_in_recovery()") is True
            with primary_sync_engine.begin() as conn:
                conn.execute(sa.text("CREATE TABLE t (i int)"))
                conn.execute(sa.text("INSERT INTO t VALUES (1)"))
            pg_replica_pair.wait_for_replay()
            with replica_sync_engine.connect() as conn:
                assert conn.scalar(sa.text("SELECT count(*) FROM t")) == 1
        """
    )
    inner.runpytest().assert_outcomes(passed=2)


def test_failover_fixture_is_skipped_for_pg8000_with_the_reason(inner: pytest.Pytester) -> None:
    inner.makepyfile("def test_f(failover_sync_engine): pass")
    result = inner.runpytest("-rs", "--pgtopo-driver=pg8000")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(
        [
            "*no selected driver (pg8000) can back sync multi-host engines; drivers that can: psycopg, psycopg2*"
        ]
    )
