"""Proof, under real concurrency through a real PgBouncer in transaction mode, that the naive
configurations fail with the real errors and the recipes work, for every driver.

Workload: 20 workers on an engine pool of 10, PgBouncer default_pool_size=4,
200 committed transactions with bound parameters and repeated statements.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from pytest_pgtopo import (
    ClientOptions,
    DriverUnsupportedError,
    Endpoint,
    SessionSettings,
    create_async_engine,
    create_engine,
    drivers,
)
from pytest_pgtopo.pgbouncer_facts import refused_startup_parameter
from pytest_pgtopo.recipes.pooler import keeps_prepared_statements
from pytest_pgtopo.session import PgtopoSession
from pytest_pgtopo.topologies.bouncer import BouncerTopology

from .support import query_once, wait_for

WORKERS = 20
TRANSACTIONS = 200
POOL = {"pool_size": 10, "max_overflow": 0}
METADATA = sa.MetaData()
PROOF = sa.Table(
    "proof",
    METADATA,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("worker", sa.Integer, nullable=False),
    sa.Column("n", sa.Integer, nullable=False),
)
INSERT = sa.text("INSERT INTO proof (worker, n) VALUES (:w, :n)")
COUNT = sa.text("SELECT count(*) FROM proof WHERE worker = :w")
# The settings the direct recipe sends at startup, which a stock PgBouncer refuses.
NO_STARTUP_SETTINGS = SessionSettings(
    timezone=None, statement_timeout=None, idle_in_transaction_session_timeout=None
)


@pytest.fixture(scope="module")
def pgtopo_schema() -> sa.MetaData:
    return METADATA


def _units() -> list[tuple[int, int]]:
    return [(n % WORKERS, n) for n in range(TRANSACTIONS)]


def sync_workload(engine: sa.Engine, *, autocommit: bool = False) -> list[str]:
    """Run the workload on `engine`; return the distinct errors (empty when all committed)."""
    if autocommit:
        engine = engine.execution_options(isolation_level="AUTOCOMMIT")
    errors: set[str] = set()

    def unit(worker: int, n: int) -> None:
        try:
            with engine.begin() as conn:
                conn.execute(INSERT, {"w": worker, "n": n})
                conn.execute(COUNT, {"w": worker})
        except Exception as exc:  # noqa: BLE001 - every failure is evidence, reported whole.
            errors.add(_describe(exc))

    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(lambda args: unit(*args), _units()))
    return sorted(errors)


async def async_workload(engine: AsyncEngine, *, autocommit: bool = False) -> list[str]:
    if autocommit:
        engine = engine.execution_options(isolation_level="AUTOCOMMIT")
    errors: set[str] = set()
    queue: asyncio.Queue[tuple[int, int]] = asyncio.Queue()
    for item in _units():
        queue.put_nowait(item)

    async def worker() -> None:
        while not queue.empty():
            worker_id, n = queue.get_nowait()
            try:
                async with engine.begin() as conn:
                    await conn.execute(INSERT, {"w": worker_id, "n": n})
                    await conn.execute(COUNT, {"w": worker_id})
            except Exception as exc:  # noqa: BLE001 - every failure is evidence, reported whole.
                errors.add(_describe(exc))

    await asyncio.gather(*(worker() for _ in range(WORKERS)))
    return sorted(errors)


def _describe(exc: Exception) -> str:
    cause = exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc
    return f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}"


def _rows(endpoint: Endpoint) -> int:
    engine = create_engine(endpoint, "pg8000", pooler="transaction")
    try:
        with engine.connect() as conn:
            return int(conn.scalar(sa.text("SELECT count(*) FROM proof")))
    finally:
        engine.dispose()


# --- the recipe works -------------------------------------------------------------------------


@pytest.mark.parametrize("autocommit", [False, True], ids=["transactions", "autocommit"])
def test_sync_recipe_survives_transaction_pooling(
    pgbouncer_sync_engine: sa.Engine,
    pg_bouncer_database: Endpoint,
    pgtopo_driver: str,
    autocommit: bool,
) -> None:
    engine = create_engine(pg_bouncer_database, pgtopo_driver, pooler="transaction", **POOL)
    try:
        if autocommit and not drivers.get(pgtopo_driver).autocommit_behind_pooler:
            with pytest.raises(
                DriverUnsupportedError, match="fails in AUTOCOMMIT behind a transaction pooler"
            ):
                create_engine(
                    pg_bouncer_database,
                    pgtopo_driver,
                    pooler="transaction",
                    isolation_level="AUTOCOMMIT",
                )
            return
        assert sync_workload(engine, autocommit=autocommit) == []
    finally:
        engine.dispose()
    assert _rows(pg_bouncer_database) == TRANSACTIONS


@pytest.mark.parametrize("autocommit", [False, True], ids=["transactions", "autocommit"])
async def test_async_recipe_survives_transaction_pooling(
    pgbouncer_engine: AsyncEngine,
    pg_bouncer_database: Endpoint,
    pgtopo_driver: str,
    autocommit: bool,
) -> None:
    engine = create_async_engine(pg_bouncer_database, pgtopo_driver, pooler="transaction", **POOL)
    try:
        assert await async_workload(engine, autocommit=autocommit) == []
    finally:
        await engine.dispose()
    assert _rows(pg_bouncer_database) == TRANSACTIONS


def test_sync_recipe_settings_take_effect_through_the_pooler(
    pgbouncer_sync_engine: sa.Engine, request: pytest.FixtureRequest
) -> None:
    with pgbouncer_sync_engine.connect() as conn:
        # Twice, in separate transactions: each may land on another server connection.
        for _ in range(2):
            assert dict(conn.execute(_SHOW).mappings().one()) == _expected(request)
            conn.commit()


async def test_async_recipe_settings_take_effect_through_the_pooler(
    pgbouncer_engine: AsyncEngine, request: pytest.FixtureRequest
) -> None:
    async with pgbouncer_engine.connect() as conn:
        for _ in range(2):
            assert dict((await conn.execute(_SHOW)).mappings().one()) == _expected(request)
            await conn.commit()


_SHOW = sa.text(
    "SELECT current_setting('application_name') AS application_name,"
    " current_setting('TimeZone') AS timezone,"
    " current_setting('statement_timeout') AS statement_timeout,"
    " current_setting('idle_in_transaction_session_timeout') AS idle"
)


def _expected(request: pytest.FixtureRequest) -> dict[str, str]:
    # application_name travels as a startup parameter the pooler replays; the rest were made
    # durable on the test's database by the fixture (ALTER DATABASE ... SET).
    return {
        "application_name": f"pytest-pgtopo main {request.node.name}"[:63],
        "timezone": "UTC",
        "statement_timeout": "30s",
        "idle": "1min",
    }


def test_traffic_is_really_pooled(
    pgbouncer_sync_engine: sa.Engine,
    pg_bouncer: BouncerTopology,
    pg_bouncer_database: Endpoint,
    pgtopo_driver: str,
) -> None:
    """Ten client connections, all checked out at once, share at most default_pool_size (4)
    server connections."""
    engine = create_engine(pg_bouncer_database, pgtopo_driver, pooler="transaction", **POOL)
    connections = [engine.connect() for _ in range(10)]
    try:
        for conn in connections:
            conn.execute(sa.text("SELECT 1"))
            conn.commit()
        clients = [
            c for c in pg_bouncer.show_clients() if c["database"] == pg_bouncer_database.dbname
        ]
        backends = pg_bouncer.server.admin.scalar(
            f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{pg_bouncer_database.dbname}'"
        )
        assert len(clients) >= 10
        assert 1 <= backends <= 4, f"{backends} server connections for 10 clients"
    finally:
        for conn in connections:
            conn.close()
        engine.dispose()


# --- the naive configurations: facts about a given PgBouncer ----------------------------------


@pytest.fixture(scope="module")
def untracked_bouncer(
    pg_bouncer: BouncerTopology, pg_bouncer_factory: Callable[..., BouncerTopology]
) -> BouncerTopology:
    """A PgBouncer that does not track prepared statements: the stock one before 1.24 (1.21-1.23
    only track when told to), one with max_prepared_statements=0 on newer ones."""
    if not pg_bouncer.pooler.tracks_prepared_statements:
        return pg_bouncer
    return pg_bouncer_factory(extra_settings={"max_prepared_statements": "0"})


@pytest.fixture(scope="module")
def tracking_bouncer(
    pg_bouncer: BouncerTopology, pg_bouncer_factory: Callable[..., BouncerTopology]
) -> BouncerTopology:
    """A PgBouncer that tracks prepared statements (1.21+): the stock one since 1.24."""
    if pg_bouncer.pooler.tracks_prepared_statements:
        return pg_bouncer
    version = ".".join(map(str, pg_bouncer.pooler.version))
    if pg_bouncer.pooler.version < (1, 21, 0):
        pytest.skip(
            f"PgBouncer {version} cannot track prepared statements (1.21+ can): point "
            "PGTOPO_PGBOUNCER_BIN at a newer one (.ci/build-pgbouncer trixie builds 1.24)"
        )
    return pg_bouncer_factory(extra_settings={"max_prepared_statements": "200"})


@pytest.fixture
def database_on(
    request: pytest.FixtureRequest, pgtopo_session: PgtopoSession
) -> Iterator[Callable[[BouncerTopology], Endpoint]]:
    """This test's database (the proof schema) reached through any PgBouncer topology."""
    with contextlib.ExitStack() as stack:

        def make(topology: BouncerTopology) -> Endpoint:
            databases = pgtopo_session.databases(topology)
            database = stack.enter_context(databases.for_test(request.node.name, METADATA))
            return topology.bouncer.with_dbname(database.name)

        yield make


async def test_asyncpg_default_statement_cache_breaks(
    untracked_bouncer: BouncerTopology, database_on: Callable[[BouncerTopology], Endpoint]
) -> None:
    endpoint = database_on(untracked_bouncer)
    naive = create_async_engine(endpoint, "asyncpg", settings=NO_STARTUP_SETTINGS, **POOL)
    try:
        errors = await async_workload(naive)
    finally:
        await naive.dispose()
    assert any(
        "prepared statement" in e and ("does not exist" in e or "already exists" in e)
        for e in errors
    ), errors


async def test_asyncpg_default_statement_cache_survives_a_tracking_pgbouncer(
    tracking_bouncer: BouncerTopology, database_on: Callable[[BouncerTopology], Endpoint]
) -> None:
    endpoint = database_on(tracking_bouncer)
    naive = create_async_engine(endpoint, "asyncpg", settings=NO_STARTUP_SETTINGS, **POOL)
    try:
        assert await async_workload(naive) == []
    finally:
        await naive.dispose()
    assert _rows(endpoint) == TRANSACTIONS


def test_psycopg_default_prepare_threshold_breaks(
    untracked_bouncer: BouncerTopology, database_on: Callable[[BouncerTopology], Endpoint]
) -> None:
    naive = create_engine(
        database_on(untracked_bouncer),
        "psycopg",
        settings=NO_STARTUP_SETTINGS,
        client=ClientOptions(prepared_statements=True),
        **POOL,
    )
    try:
        errors = sync_workload(naive)
    finally:
        naive.dispose()
    assert any("_pg3_" in e and ("already exists" in e or "does not exist" in e) for e in errors), (
        errors
    )


def test_psycopg_default_prepare_threshold_survives_a_tracking_pgbouncer(
    tracking_bouncer: BouncerTopology, database_on: Callable[[BouncerTopology], Endpoint]
) -> None:
    endpoint = database_on(tracking_bouncer)
    naive = create_engine(endpoint, "psycopg", settings=NO_STARTUP_SETTINGS, **POOL)
    try:
        assert sync_workload(naive) == []
    finally:
        naive.dispose()
    assert _rows(endpoint) == TRANSACTIONS


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
def test_the_pooler_recipe_keeps_prepared_statements_where_they_are_safe(
    tracking_bouncer: BouncerTopology,
    database_on: Callable[[BouncerTopology], Endpoint],
    driver: str,
) -> None:
    """With the topology's .pooler the recipe leaves the caches on (where proven), and the
    workload's statements really are prepared: PgBouncer counts the clients' Parse messages."""
    endpoint = database_on(tracking_bouncer)
    pooler = tracking_bouncer.pooler
    if not keeps_prepared_statements(pooler, drivers.get(driver)):
        pytest.skip(
            f"{driver} keeps no prepared statements behind {pooler.describe()} (libpq < 17)"
        )
    parsed_before = _client_parses(tracking_bouncer, endpoint.dbname)
    run = _run_workload(endpoint, driver, pooler=pooler)
    assert run == []
    assert _rows(endpoint) == TRANSACTIONS
    assert _client_parses(tracking_bouncer, endpoint.dbname) > parsed_before


async def test_ddl_under_a_tracked_statement_needs_reconnect_and_a_fresh_pool(
    tracking_bouncer: BouncerTopology, database_on: Callable[[BouncerTopology], Endpoint]
) -> None:
    """What tracking brings back: after DDL changes a prepared query's result type, PgBouncer
    keeps serving the old server-side statement ("cached plan must not change result type").
    Direct, asyncpg's dialect recovers after one error; through PgBouncer even a new engine
    fails. The remedy: RECONNECT PgBouncer's server connections and dispose the app's pool."""
    endpoint = database_on(tracking_bouncer)
    select_all = sa.text("SELECT * FROM proof ORDER BY id")

    async def select_through(engine: AsyncEngine) -> str:
        try:
            async with engine.connect() as conn:
                return str((await conn.execute(select_all)).all())
        except sa.exc.DBAPIError as exc:
            return _describe(exc)

    engine = create_async_engine(endpoint, "asyncpg", pooler=tracking_bouncer.pooler, **POOL)
    try:
        async with engine.begin() as conn:
            await conn.execute(INSERT, {"w": 1, "n": 1})
        for _ in range(3):  # Prepared (asyncpg's cache), tracked and prepared by PgBouncer.
            assert await select_through(engine) == "[(1, 1, 1)]"
        admin = create_engine(tracking_bouncer.primary.with_dbname(endpoint.dbname), "psycopg")
        with admin.begin() as conn:  # A migration, straight to the server.
            conn.execute(sa.text("ALTER TABLE proof ADD COLUMN note text"))
        admin.dispose()
        stale = "InvalidCachedStatementError: cached statement plan is invalid"
        assert (await select_through(engine)).startswith(stale)
        await engine.dispose()
        assert (await select_through(engine)).startswith(stale), "a fresh pool is not enough"
        tracking_bouncer.reconnect()  # Server connections close once released: statements go.
        await engine.dispose()  # And the clients' own statement caches with them.
        assert await select_through(engine) == "[(1, 1, 1, None)]"
    finally:
        await engine.dispose()


def _run_workload(endpoint: Endpoint, driver: str, **engine_kwargs: Any) -> list[str]:
    if drivers.get(driver).supports("sync"):
        engine = create_engine(endpoint, driver, **engine_kwargs, **POOL)
        try:
            return sync_workload(engine)
        finally:
            engine.dispose()

    async def run() -> list[str]:
        engine = create_async_engine(endpoint, driver, **engine_kwargs, **POOL)
        try:
            return await async_workload(engine)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _client_parses(topology: BouncerTopology, dbname: str) -> int:
    # SHOW STATS has total_client_parse_count since 1.21 (prepared statement tracking).
    rows = [row for row in topology.show_stats() if row["database"] == dbname]
    return sum(int(row.get("total_client_parse_count", 0)) for row in rows)


@pytest.mark.parametrize("pgtopo_driver", ["pg8000"])
def test_pg8000_autocommit_breaks(
    pgbouncer_sync_engine: sa.Engine, pg_bouncer_database: Endpoint
) -> None:
    # A socket timeout bounds the hang that follows: pg8000's protocol state is out of step.
    # AUTOCOMMIT is the engine's own isolation level, not an execution option: with the option,
    # each connection returned to the pool switches back to autocommit off, and pg8000 then
    # opens a transaction that idles in the pool holding one of PgBouncer's four server
    # connections, until every worker queues behind them (query_wait_timeout, 120 s).
    naive = create_engine(
        pg_bouncer_database,
        "pg8000",
        settings=NO_STARTUP_SETTINGS,
        connect_args={"timeout": 5},
        isolation_level="AUTOCOMMIT",
        # Connections pg8000 leaves out of step may never come back to the pool: bound the wait.
        pool_timeout=5,
        **POOL,
    )
    try:
        errors = sync_workload(naive)
    finally:
        naive.dispose()
    assert any("unnamed prepared statement does not exist" in e for e in errors), errors


@pytest.mark.parametrize("driver", sorted(drivers.DRIVERS))
def test_cheatsheet_jit_off_is_refused_by_the_pooler(
    pg_bouncer_database: Endpoint, pg_bouncer: BouncerTopology, driver: str
) -> None:
    """The cheatsheet's PgBouncer recipe sends server_settings={"jit": "off"}: refused on every
    PgBouncer, worded per version (1.20+ names the setting inside libpq's `options`)."""
    drivers.get(driver).require_installed()
    connect_args = drivers.get(driver).startup_args({"jit": "off"})
    in_options = drivers.get(driver).own_startup_parameters is not None
    message = refused_startup_parameter(pg_bouncer.pooler.version, "jit", in_options=in_options)
    with pytest.raises(sa.exc.DBAPIError, match=message):
        query_once(pg_bouncer_database, driver, connect_args=connect_args)


@pytest.mark.parametrize("driver", sorted(drivers.DRIVERS))
def test_direct_recipe_is_refused_by_the_pooler(pg_bouncer_database: Endpoint, driver: str) -> None:
    """statement_timeout & co. as startup parameters: what works direct fails through PgBouncer."""
    with pytest.raises(sa.exc.DBAPIError, match="unsupported startup parameter"):
        query_once(pg_bouncer_database, driver)


# --- faults: PgBouncer restart, KILL, PAUSE/RESUME --------------------------------------------


@pytest.mark.parametrize("fault", ["restart", "kill"])
def test_pre_ping_rides_out_a_dropped_connection(
    pgbouncer_sync_engine: sa.Engine,
    pg_bouncer: BouncerTopology,
    pg_bouncer_database: Endpoint,
    pgtopo_driver: str,
    fault: str,
) -> None:
    without_ping = create_engine(
        pg_bouncer_database, pgtopo_driver, pooler="transaction", pool_pre_ping=False
    )
    try:
        for engine in (pgbouncer_sync_engine, without_ping):
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        if fault == "restart":
            pg_bouncer.restart_bouncer()
        else:
            pg_bouncer.kill(pg_bouncer_database.dbname)
        with pgbouncer_sync_engine.connect() as conn:  # pool_pre_ping=True: replaced silently
            assert conn.scalar(sa.text("SELECT 42")) == 42
        with pytest.raises(sa.exc.DBAPIError) as info, without_ping.connect() as conn:
            conn.execute(sa.text("SELECT 42"))
        assert info.value.connection_invalidated, f"not a disconnect: {info.value}"
    finally:
        without_ping.dispose()


async def test_async_pre_ping_rides_out_a_bouncer_restart(
    pgbouncer_engine: AsyncEngine, pg_bouncer: BouncerTopology
) -> None:
    async with pgbouncer_engine.connect() as conn:
        await conn.execute(sa.text("SELECT 1"))
    pg_bouncer.restart_bouncer()
    async with pgbouncer_engine.connect() as conn:
        assert await conn.scalar(sa.text("SELECT 42")) == 42


def test_pause_holds_queries_and_resume_releases_them(
    pgbouncer_sync_engine: sa.Engine, pg_bouncer: BouncerTopology
) -> None:
    with pgbouncer_sync_engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))
        conn.commit()
    pg_bouncer.pause()
    finished = threading.Event()
    result: list[int] = []

    def query() -> None:
        with pgbouncer_sync_engine.connect() as conn:
            result.append(conn.scalar(sa.text("SELECT 7")))
        finished.set()

    thread = threading.Thread(target=query)
    try:
        thread.start()
        # Held: the query is waiting in PgBouncer (SHOW CLIENTS reports it waiting).
        wait_for(
            lambda: any(c["state"] == "waiting" for c in pg_bouncer.show_clients()),
            "the query to wait in PgBouncer",
        )
        assert not finished.is_set()
    finally:
        pg_bouncer.resume()
    assert finished.wait(30), "the query did not complete after RESUME"
    thread.join(30)
    assert result == [7]


def test_factory_builds_other_pool_modes_and_settings(
    pg_bouncer_factory: Callable[..., BouncerTopology], pgtopo_session: PgtopoSession
) -> None:
    options: dict[str, Any] = {
        "pool_mode": "session",
        "default_pool_size": 2,
        "extra_settings": {"server_idle_timeout": "7"},
    }
    topology = pg_bouncer_factory(**options)
    assert pg_bouncer_factory(**options) is topology, "equal options share one topology"
    config = {row["key"]: row["value"] for row in topology.pgbouncer.show("CONFIG")}
    assert (config["pool_mode"], config["default_pool_size"], config["server_idle_timeout"]) == (
        "session",
        "2",
        "7",
    )
    # Session pooling pins a server connection per client: psycopg's prepared statements work.
    databases = pgtopo_session.databases(topology)
    name = databases.create("factory", METADATA)
    engine = create_engine(
        topology.bouncer.with_dbname(name),
        "psycopg",
        settings=NO_STARTUP_SETTINGS,
        pool_size=2,
        max_overflow=0,
    )
    try:
        assert sync_workload(engine) == []
    finally:
        engine.dispose()
        databases.drop_later(name)
