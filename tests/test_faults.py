"""PostgreSQL's own faults, per driver: the error the driver really raises, and the recipe that
rides it out. Each fault is real: a terminated backend, an idle-session timeout, a restart, a
lagging standby, PgBouncer churn and an exhausted pool, a network that swallows everything."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

from pytest_pgtopo import (
    BouncerTopology,
    ClientOptions,
    Endpoint,
    HaTopology,
    LoadProbe,
    PlainTopology,
    create_engine,
)
from pytest_pgtopo.loadprobe import classify
from pytest_pgtopo.topologies.proxied import ProxiedEndpoint

from .support import wait_for

PID = sa.text("SELECT pg_backend_pid()")


def _gone(admin_scalar: Callable[[str], Any], pid: int) -> Callable[[], bool]:
    return lambda: not admin_scalar(f"SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}")


def _pooled_backend_dies(
    endpoint: Endpoint, driver: str, topology: PlainTopology, kill: Callable[[int], None], **kw: Any
) -> BaseException | None:
    """Open a pooled connection, let `kill(pid)` end its backend, use the pool again; returns
    the error the next checkout raised (None: the engine rode it out). A retry always works."""
    engine = create_engine(endpoint, driver, pool_size=1, max_overflow=0, **kw)
    try:
        with engine.connect() as conn:
            pid = conn.scalar(PID)
        kill(pid)
        wait_for(_gone(topology.server.admin.scalar, pid), f"backend {pid} to exit")
        return _reuse(engine, pid)
    finally:
        engine.dispose()


def _reuse(engine: sa.Engine, pid: int) -> BaseException | None:
    error = None
    try:
        with engine.connect() as conn:
            assert conn.scalar(PID) != pid
    except (sa.exc.DBAPIError, ConnectionError) as exc:
        error = exc
    wait_for(lambda: _works(engine, pid), "a retry of the unit of work to get through")
    return error


def _works(engine: sa.Engine, pid: int) -> bool:
    """One retry of the unit of work. pg8000's dead connection can survive a failed pre-ping
    and fail once more before the pool lets it go, so retries are counted until one works."""
    try:
        with engine.connect() as conn:
            return bool(conn.scalar(PID) != pid)
    except (sa.exc.DBAPIError, ConnectionError):
        return False


def _rides_out(error: BaseException | None, driver: str) -> None:
    """pool_pre_ping rides it out; pg8000 1.31 is the exception: its pre-ping on a socket the
    server closed may raise a bare ConnectionResetError/BrokenPipeError (when the close arrives
    without a readable FATAL first), which SQLAlchemy does not take for a disconnect, or pass
    and leave the statement to fail with InterfaceError "network error"; only a retry of the
    unit of work gets through."""
    if driver == "pg8000":  # _reuse proved the retry works; the first try may fail.
        assert error is None or isinstance(error, ConnectionError | sa.exc.InterfaceError), error
    else:
        assert error is None, error


# SQLSTATE or driver class each driver surfaces when the server ended the connection.
ENDED = {
    "psycopg": "psycopg.OperationalError",
    "psycopg2": "psycopg2.OperationalError",
    "pg8000": "pg8000.exceptions.InterfaceError",
}


def test_admin_shutdown_57p01_and_pool_pre_ping(
    pg_sync_engine: sa.Engine,
    pg_plain: PlainTopology,
    pg_plain_database: Endpoint,
    pgtopo_driver: str,
) -> None:
    def terminate(pid: int) -> None:
        pg_plain.server.admin.scalar(f"SELECT pg_terminate_backend({pid})")

    raw = _pooled_backend_dies(
        pg_plain_database, pgtopo_driver, pg_plain, terminate, pool_pre_ping=False
    )
    assert raw is not None, "a terminated pooled connection must fail its next use"
    error, sqlstate = classify(raw)
    print(f"{pgtopo_driver}: 57P01 without pre-ping -> {error} ({sqlstate}): {raw}")
    if isinstance(raw, sa.exc.DBAPIError):
        assert raw.connection_invalidated  # SQLAlchemy knows the connection is dead: discarded.
        said = "terminating connection due to administrator command" in str(raw)
        assert said or error == ENDED.get(pgtopo_driver), error
    else:  # pg8000 only: a bare socket error, see _rides_out.
        assert pgtopo_driver == "pg8000"
        assert isinstance(raw, ConnectionError)
    # The recipe (pool_pre_ping=True, create_engine's default) rides it out.
    _rides_out(
        _pooled_backend_dies(pg_plain_database, pgtopo_driver, pg_plain, terminate), pgtopo_driver
    )


def test_idle_session_timeout_and_pool_pre_ping(
    pg_sync_engine: sa.Engine,
    pg_plain: PlainTopology,
    pg_plain_database: Endpoint,
    pgtopo_driver: str,
) -> None:
    def run(**kw: Any) -> BaseException | None:
        engine = create_engine(pg_plain_database, pgtopo_driver, pool_size=1, max_overflow=0, **kw)
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("SET idle_session_timeout = '100ms'"))
                conn.commit()
                pid = conn.scalar(PID)
            wait_for(_gone(pg_plain.server.admin.scalar, pid), "the idle session to time out")
            return _reuse(engine, pid)
        finally:
            engine.dispose()

    raw = run(pool_pre_ping=False)
    assert isinstance(raw, sa.exc.DBAPIError)
    error, sqlstate = classify(raw)
    print(f"{pgtopo_driver}: idle_session_timeout without pre-ping -> {error} ({sqlstate})")
    assert raw.connection_invalidated
    _rides_out(run(), pgtopo_driver)  # pool_pre_ping; or pool_recycle below the timeout.


def test_server_restart_under_load_direct_and_through_haproxy(
    ha_sync_engine: sa.Engine, pg_ha: HaTopology, pg_ha_database: Endpoint, pgtopo_driver: str
) -> None:
    direct = create_engine(pg_ha.primary.with_dbname(pg_ha_database.dbname), pgtopo_driver)
    try:
        with (
            LoadProbe(direct, table="probe_direct") as via_node,
            LoadProbe(ha_sync_engine) as via_haproxy,
        ):
            via_node.wait_for_acks(10)
            via_haproxy.wait_for_acks(10)
            pg_ha.restart_primary()
            via_node.wait_recovered()
            via_haproxy.wait_recovered()
        for name, probe in (("direct", via_node), ("HAProxy", via_haproxy)):
            report = probe.report()
            print(f"{pgtopo_driver} restart {name}: {report.describe()}")
            assert report.lost == [], report.describe()  # A clean restart loses nothing.
    finally:
        direct.dispose()


def test_standby_lagging_by_a_set_delay_and_reading_your_writes(
    ha_sync_engine: sa.Engine, pg_ha: HaTopology, pg_ha_database: Endpoint, pgtopo_driver: str
) -> None:
    pg_ha.changed = True  # recovery_min_apply_delay stays on the standby: rebuild after.
    standby = pg_ha.nodes.replica.admin
    standby.execute("ALTER SYSTEM SET recovery_min_apply_delay = '1s'")
    standby.execute("SELECT pg_reload_conf()")
    wait_for(lambda: standby.scalar("SHOW recovery_min_apply_delay") == "1s", "the delay")
    reader = create_engine(pg_ha.read_endpoint.with_dbname(pg_ha_database.dbname), pgtopo_driver)
    try:
        with ha_sync_engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE lagged AS SELECT 1 AS x"))
        with ha_sync_engine.connect() as conn:  # After the commit: its record is behind this.
            lsn = conn.scalar(sa.text("SELECT pg_current_wal_insert_lsn()::text"))
        seen = sa.text("SELECT to_regclass('lagged') IS NOT NULL")
        with reader.connect() as conn:
            assert conn.scalar(seen) is False  # Stale read: the standby applies 1 s late.
        # The recipe: read your writes by waiting for the standby to replay the commit's LSN.
        replayed = sa.text(f"SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn")

        def caught_up() -> bool:
            with reader.connect() as conn:
                return bool(conn.scalar(replayed))

        wait_for(caught_up, "the standby to replay the write")
        with reader.connect() as conn:
            assert conn.scalar(seen) is True
    finally:
        reader.dispose()


def test_pgbouncer_server_lifetime_churn_is_invisible_to_clients(
    pgbouncer_sync_engine: sa.Engine, pg_bouncer: BouncerTopology, pg_bouncer_database: Endpoint
) -> None:
    db = pg_bouncer_database.dbname
    server_pids = f"SELECT array_agg(pid) FROM pg_stat_activity WHERE datname = '{db}'"
    pg_bouncer.pgbouncer.admin("SET server_lifetime = 1")
    try:
        with LoadProbe(pgbouncer_sync_engine) as probe:
            probe.wait_for_acks(10)
            first = set(pg_bouncer.server.admin.scalar(server_pids) or [])
            wait_for(  # PgBouncer replaces every server connection under the running load.
                lambda: not first & set(pg_bouncer.server.admin.scalar(server_pids) or []),
                "PgBouncer to replace its server connections",
            )
            probe.wait_for_acks(10)
        report = probe.report()
        print(f"server_lifetime churn: {report.describe()}")
        assert first
        assert report.failures == [], report.describe()
    finally:
        pg_bouncer.pgbouncer.admin("SET server_lifetime = 3600")


def test_pgbouncer_query_wait_timeout_when_the_pool_is_exhausted(
    pgbouncer_sync_engine: sa.Engine, pg_bouncer: BouncerTopology, pgtopo_driver: str
) -> None:
    size = pg_bouncer.options.default_pool_size
    holders = [pgbouncer_sync_engine.connect() for _ in range(size)]
    pg_bouncer.pgbouncer.admin("SET query_wait_timeout = 1")
    try:
        for conn in holders:  # Every server connection held by an open transaction.
            conn.begin()
            conn.execute(sa.text("SELECT 1"))
        waiting = create_engine(
            pg_bouncer.bouncer.with_dbname(holders[0].engine.url.database or ""),
            pgtopo_driver,
            pooler=pg_bouncer.pooler,
        )
        try:
            with pytest.raises(sa.exc.DBAPIError) as raised, waiting.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
            error, sqlstate = classify(raised.value)
            print(f"{pgtopo_driver}: exhausted pool -> {error} ({sqlstate}): {raised.value.orig}")
            # PgBouncer says why before it closes; libpq (psycopg) shows it, psycopg2 and pg8000
            # only see the connection closed. PgBouncer's log says it either way.
            if pgtopo_driver == "psycopg":
                assert "query_wait_timeout" in str(raised.value)
            assert "query_wait_timeout" in pg_bouncer.pgbouncer.log_tail(50)
        finally:
            waiting.dispose()
        holders.pop().close()  # The recipe: a free server connection (pool size, short transactions).
        with pgbouncer_sync_engine.connect() as conn:
            assert conn.scalar(sa.text("SELECT 1")) == 1
    finally:
        for conn in holders:
            conn.close()
        pg_bouncer.pgbouncer.admin("SET query_wait_timeout = 120")


def test_network_black_hole_hangs_until_a_client_timeout_fires(
    pg_sync_engine: sa.Engine,
    pg_fault_proxy: Callable[[Endpoint], ProxiedEndpoint],
    pg_plain_database: Endpoint,
    pgtopo_driver: str,
) -> None:
    faulty = pg_fault_proxy(pg_plain_database)
    engine = create_engine(
        faulty.endpoint, pgtopo_driver, pool_pre_ping=False, **_deadline(pgtopo_driver)
    )
    try:
        with engine.connect() as conn:
            conn.scalar(sa.text("SELECT 1"))
            faulty.proxy.swallow()  # The connection stays open; nothing comes back.
            done = threading.Event()
            outcome: list[BaseException] = []

            def query() -> None:
                try:
                    conn.scalar(sa.text("SELECT 1"))
                except Exception as exc:  # noqa: BLE001 - what the driver raises is the point.
                    outcome.append(exc)
                done.set()

            threading.Thread(target=query, daemon=True).start()
            assert not done.wait(0.3), "a black hole must not answer"
            if pgtopo_driver == "pg8000":  # Its socket timeout is the recipe: it fires.
                assert done.wait(30), "pg8000's timeout did not fire"
                print(f"pg8000 black hole -> {classify(outcome[0])}")
            else:  # libpq has no client-side statement deadline: only ending the socket helps.
                faulty.cut()
                assert done.wait(30)
                print(f"{pgtopo_driver} black hole, then cut -> {classify(outcome[0])}")
            assert outcome
    finally:
        faulty.proxy.restore()
        engine.dispose()


def _deadline(driver: str) -> dict[str, Any]:
    if driver == "pg8000":
        return {"connect_args": {"timeout": 1}}
    return {"client": ClientOptions(connect_timeout=2)}
