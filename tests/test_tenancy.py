"""Schema per tenant, on real servers, for every driver (`--pgtopo-driver all`): search_path per
transaction (SET LOCAL, `tenant()`), directly and through PgBouncer in transaction mode; per
connection (`search_path_on_connect`), which must commit its SET; the session-level SET that
leaks through PgBouncer to the next client; and schema names that need quoting.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from pytest_pgtopo import (
    Endpoint,
    SessionSettings,
    create_async_engine,
    create_engine,
    drivers,
)
from pytest_pgtopo.recipes.tenancy import search_path_on_connect, search_path_value, tenant
from pytest_pgtopo.session import PgtopoSession
from pytest_pgtopo.topologies.bouncer import BouncerTopology
from pytest_pgtopo.topologies.plain import PlainTopology

from .support import DEFAULT_PATH

TENANTS = ("tenant_a", "tenant_b")
WORKERS = 20
UNITS = 300  # 200 tenant transactions (100 each) and 100 that set nothing, interleaved.
POOL: dict[str, Any] = {"pool_size": 10, "max_overflow": 0}

INSERT = sa.text("INSERT INTO items (tenant, n) VALUES (:t, :n)")
SEEN = sa.text("SELECT DISTINCT tenant FROM items")
BARE = sa.text("SELECT current_setting('search_path'), to_regclass('items') IS NOT NULL")
COUNTS = sa.text(
    "SELECT (SELECT array_agg(DISTINCT tenant) FROM tenant_a.items),"
    " (SELECT count(*) FROM tenant_a.items),"
    " (SELECT array_agg(DISTINCT tenant) FROM tenant_b.items),"
    " (SELECT count(*) FROM tenant_b.items)"
)
EXPECTED_COUNTS = (["tenant_a"], 100, ["tenant_b"], 100)


def create_tenants(engine: sa.Engine) -> None:
    """Two tenants, each its own schema holding a table of the same name."""
    with engine.begin() as conn:
        for name in TENANTS:
            conn.execute(sa.text(f"CREATE SCHEMA {name}"))
            conn.execute(
                sa.text(
                    f"CREATE TABLE {name}.items"
                    " (id serial PRIMARY KEY, tenant text NOT NULL, n int NOT NULL)"
                )
            )


@pytest.fixture(scope="module")
def pgtopo_schema() -> Callable[[sa.Engine], None]:
    return create_tenants


def _unit(n: int) -> str | None:
    """Which tenant unit `n` works for; None: a transaction that sets nothing."""
    return (*TENANTS, None)[n % 3]


def _check_tenant(name: str, seen: list[str]) -> list[str]:
    return [] if seen == [name] else [f"{name} saw rows of {seen}"]


def _check_bare(row: sa.Row[Any]) -> list[str]:
    path, resolves = tuple(row)
    return [] if (path, resolves) == (DEFAULT_PATH, False) else [f"leaked into a bare one: {path}"]


# --- schema per tenant, per transaction (SET LOCAL): direct and through PgBouncer ------------


def sync_tenant_workload(engine: sa.Engine, run: Callable[[str], Any]) -> list[str]:
    """UNITS transactions on WORKERS threads; `run(name)` opens a transaction for tenant `name`.
    Returns the problems seen (empty when every tenant saw only its own rows)."""
    problems: list[str] = []

    def unit(n: int) -> None:
        try:
            name = _unit(n)
            if name is None:
                with engine.begin() as conn:
                    problems.extend(_check_bare(conn.execute(BARE).one()))
                return
            with run(name) as conn:
                conn.execute(INSERT, {"t": name, "n": n})
                problems.extend(_check_tenant(name, list(conn.scalars(SEEN))))
        except Exception as exc:  # noqa: BLE001 - every failure is evidence, reported whole.
            problems.append(f"{type(exc).__name__}: {exc}")

    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(unit, range(UNITS)))
    with engine.connect() as conn:
        assert tuple(conn.execute(COUNTS).one()) == EXPECTED_COUNTS
    return sorted(set(problems))


async def async_tenant_workload(engine: AsyncEngine, run: Callable[[str], Any]) -> list[str]:
    problems: list[str] = []
    pending = list(range(UNITS))

    async def worker() -> None:
        while pending:
            n = pending.pop()
            try:
                name = _unit(n)
                if name is None:
                    async with engine.begin() as conn:
                        problems.extend(_check_bare((await conn.execute(BARE)).one()))
                    continue
                async with run(name) as conn:
                    await conn.execute(INSERT, {"t": name, "n": n})
                    problems.extend(_check_tenant(name, list(await conn.scalars(SEEN))))
            except Exception as exc:  # noqa: BLE001 - every failure is evidence, reported whole.
                problems.append(f"{type(exc).__name__}: {exc}")

    await asyncio.gather(*(worker() for _ in range(WORKERS)))
    async with engine.connect() as conn:
        assert tuple((await conn.execute(COUNTS)).one()) == EXPECTED_COUNTS
    return sorted(set(problems))


@pytest.mark.usefixtures("pg_sync_engine")
def test_tenant_transactions_stay_apart_direct(
    pg_plain_database: Endpoint, pgtopo_driver: str
) -> None:
    engine = create_engine(pg_plain_database, pgtopo_driver, **POOL)
    try:
        assert sync_tenant_workload(engine, lambda name: tenant(engine, name)) == []
    finally:
        engine.dispose()


@pytest.mark.usefixtures("pgbouncer_sync_engine")
def test_tenant_transactions_stay_apart_through_pgbouncer(
    pg_bouncer_database: Endpoint, pgtopo_driver: str
) -> None:
    """10 clients on PgBouncer's 4 server connections: SET LOCAL never reaches another client."""
    engine = create_engine(pg_bouncer_database, pgtopo_driver, pooler="transaction", **POOL)
    try:
        assert sync_tenant_workload(engine, lambda name: tenant(engine, name)) == []
    finally:
        engine.dispose()


@pytest.mark.usefixtures("pg_engine")
async def test_async_tenant_transactions_stay_apart_direct(
    pg_plain_database: Endpoint, pgtopo_driver: str
) -> None:
    engine = create_async_engine(pg_plain_database, pgtopo_driver, **POOL)
    try:
        assert await async_tenant_workload(engine, lambda name: tenant(engine, name)) == []
    finally:
        await engine.dispose()


@pytest.mark.usefixtures("pgbouncer_engine")
async def test_async_tenant_transactions_stay_apart_through_pgbouncer(
    pg_bouncer_database: Endpoint, pgtopo_driver: str
) -> None:
    engine = create_async_engine(pg_bouncer_database, pgtopo_driver, pooler="transaction", **POOL)
    try:
        assert await async_tenant_workload(engine, lambda name: tenant(engine, name)) == []
    finally:
        await engine.dispose()


# --- schema per tenant, per connection (connect event): direct connections --------------------


def test_search_path_on_connect_keeps_tenants_apart(
    pg_sync_engine: sa.Engine, pg_plain_database: Endpoint, pgtopo_driver: str
) -> None:
    """One engine per tenant, each connection's search_path set once when it opens."""
    engines = {name: create_engine(pg_plain_database, pgtopo_driver, **POOL) for name in TENANTS}
    for name, engine in engines.items():
        search_path_on_connect(engine, name)
    try:
        problems = sync_tenant_workload(pg_sync_engine, lambda name: engines[name].begin())
        assert problems == []
    finally:
        for engine in engines.values():
            engine.dispose()


async def test_async_search_path_on_connect_keeps_tenants_apart(
    pg_engine: AsyncEngine, pg_plain_database: Endpoint, pgtopo_driver: str
) -> None:
    engines = {
        name: create_async_engine(pg_plain_database, pgtopo_driver, **POOL) for name in TENANTS
    }
    for name, engine in engines.items():
        search_path_on_connect(engine, name)
    try:
        problems = await async_tenant_workload(pg_engine, lambda name: engines[name].begin())
        assert problems == []
    finally:
        for engine in engines.values():
            await engine.dispose()


def _naive_search_path(engine: sa.Engine | AsyncEngine) -> None:
    """The connect event as usually written: SET, and no commit."""

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("SET search_path TO tenant_a")
        cursor.close()

    sa.event.listen(
        engine.sync_engine if isinstance(engine, AsyncEngine) else engine, "connect", on_connect
    )


STATE = "SELECT state FROM pg_stat_activity WHERE application_name = '{}'"
# What the connection looks like before any statement, and search_path after one ROLLBACK.
COMMITTED = ("idle", "tenant_a")
NAIVE = ("idle in transaction", DEFAULT_PATH)


@pytest.mark.parametrize("naive", [False, True], ids=["recipe", "naive"])
@pytest.mark.usefixtures("pg_sync_engine")
def test_search_path_on_connect_commits_its_set(
    pg_plain: PlainTopology,
    pg_plain_database: Endpoint,
    pgtopo_driver: str,
    naive: bool,
) -> None:
    """Every driver opens a transaction for the SET. Left open, the new connection sits idle in
    transaction, and the application's first ROLLBACK takes the search_path with it."""
    name = f"orders-api on-connect {pgtopo_driver} {naive}"
    settings = SessionSettings(application_name=name)
    engine = create_engine(pg_plain_database, pgtopo_driver, settings=settings)
    _naive_search_path(engine) if naive else search_path_on_connect(engine, "tenant_a")
    try:
        with engine.connect() as conn:
            state = pg_plain.server.admin.scalar(STATE.format(name))
            conn.execute(sa.text("SELECT 1"))
            conn.rollback()
            path = conn.scalar(sa.text("SHOW search_path"))
        assert (state, path) == (NAIVE if naive else COMMITTED)
    finally:
        engine.dispose()


@pytest.mark.parametrize("naive", [False, True], ids=["recipe", "naive"])
@pytest.mark.usefixtures("pg_engine")
async def test_async_search_path_on_connect_commits_its_set(
    pg_plain: PlainTopology,
    pg_plain_database: Endpoint,
    pgtopo_driver: str,
    naive: bool,
) -> None:
    name = f"orders-api on-connect async {pgtopo_driver} {naive}"
    settings = SessionSettings(application_name=name)
    engine = create_async_engine(pg_plain_database, pgtopo_driver, settings=settings)
    _naive_search_path(engine) if naive else search_path_on_connect(engine, "tenant_a")
    try:
        async with engine.connect() as conn:
            state = pg_plain.server.admin.scalar(STATE.format(name))
            await conn.execute(sa.text("SELECT 1"))
            await conn.rollback()
            path = await conn.scalar(sa.text("SHOW search_path"))
        assert (state, path) == (NAIVE if naive else COMMITTED)
    finally:
        await engine.dispose()


# --- the mistake: a session-level SET through PgBouncer in transaction mode --------------------


@pytest.fixture(scope="module")
def two_server_bouncer(pg_bouncer_factory: Callable[..., BouncerTopology]) -> BouncerTopology:
    """Transaction pooling on at most 2 server connections per database: who gets which is
    deterministic (an idle server connection is reused before a new one is opened)."""
    return pg_bouncer_factory(default_pool_size=2)


@pytest.fixture
def two_server_database(
    two_server_bouncer: BouncerTopology, pgtopo_session: PgtopoSession
) -> Iterator[Endpoint]:
    databases = pgtopo_session.databases(two_server_bouncer)
    name = databases.create("set_leak", create_tenants)
    yield two_server_bouncer.bouncer.with_dbname(name)
    databases.drop_later(name)


@pytest.mark.parametrize("driver", drivers.names_supporting("sync"))
def test_session_set_through_pgbouncer_leaks_and_is_lost(
    two_server_database: Endpoint, driver: str
) -> None:
    def client(name: str) -> sa.Engine:
        settings = SessionSettings(application_name=f"orders-api {name}")
        return create_engine(two_server_database, driver, settings=settings, pooler="transaction")

    a, b, c = client("a"), client("b"), client("c")
    try:
        # The recipe: SET LOCAL ends with A's transaction; B, which set nothing, sees the default.
        with tenant(a, "tenant_a") as conn:
            conn.execute(INSERT, {"t": "tenant_a", "n": 1})
        with b.begin() as conn:
            assert tuple(conn.execute(BARE).one()) == (DEFAULT_PATH, False)
        # The mistake: A's plain SET stays on the one server connection, and B gets it next.
        with a.begin() as conn:
            conn.execute(sa.text("SET search_path TO tenant_a"))
        with b.begin() as conn:
            assert conn.scalar(sa.text("SHOW search_path")) == "tenant_a"
            assert list(conn.scalars(SEEN)) == ["tenant_a"]  # B reads tenant_a's table.
        # And A loses it: while C's transaction holds that server connection, A gets a new one.
        with c.connect() as held:
            assert held.scalar(sa.text("SHOW search_path")) == "tenant_a"
            with a.begin() as conn:
                assert tuple(conn.execute(BARE).one()) == (DEFAULT_PATH, False)
    finally:
        for engine in (a, b, c):
            engine.dispose()


# --- quoting ---------------------------------------------------------------------------------


def test_schema_names_are_quoted(
    pg_sync_engine: sa.Engine, pg_plain_database: Endpoint, pgtopo_driver: str
) -> None:
    """A schema name is taken literally: case, spaces and quotes survive, nothing is injected."""
    odd = 'Tenant "C"; DROP SCHEMA tenant_a'
    assert search_path_value(odd, "public") == '"Tenant ""C""; DROP SCHEMA tenant_a", "public"'
    with pg_sync_engine.begin() as conn:
        conn.execute(sa.text('CREATE SCHEMA "Tenant ""C""; DROP SCHEMA tenant_a"'))
        conn.execute(sa.text('CREATE TABLE "Tenant ""C""; DROP SCHEMA tenant_a".items (n int)'))
    with tenant(pg_sync_engine, odd) as conn:
        conn.execute(sa.text("INSERT INTO items VALUES (1)"))
    engine = create_engine(pg_plain_database, pgtopo_driver)
    search_path_on_connect(engine, odd)
    try:
        with engine.connect() as conn:
            assert conn.scalar(sa.text("SELECT count(*) FROM items")) == 1
            assert conn.scalar(sa.text("SELECT to_regnamespace('tenant_a') IS NOT NULL"))
    finally:
        engine.dispose()
