"""Session state done right, on real servers, for every driver (`--pgtopo-driver all`):
schema-per-tenant search_path (per connection, per transaction, through PgBouncer),
statement_timeout per connection and per transaction, idle_in_transaction_session_timeout,
and application_name. Where the cheatsheet warns of a mistake, a test shows it biting.
"""

from __future__ import annotations

import asyncio
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from pytest_pgtopo import (
    Endpoint,
    PgtopoWarning,
    SessionSettings,
    create_async_engine,
    create_engine,
    drivers,
)
from pytest_pgtopo.recipes.tenancy import search_path_on_connect, search_path_value, tenant
from pytest_pgtopo.recipes.transaction_settings import aset_local, set_local
from pytest_pgtopo.session import PgtopoSession
from pytest_pgtopo.topologies.bouncer import BouncerTopology
from pytest_pgtopo.topologies.plain import PlainTopology

TENANTS = ("tenant_a", "tenant_b")
DEFAULT_PATH = '"$user", public'
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


# --- quoting; set_local: several settings, one transaction, reverted after -------------------


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


def test_set_local_lasts_one_transaction(pg_sync_engine: sa.Engine) -> None:
    show = sa.text(
        "SELECT current_setting('search_path'), current_setting('statement_timeout'),"
        " current_setting('app.tenant_id', true)"
    )
    with pg_sync_engine.connect() as conn:
        set_local(
            conn,
            {"app.tenant_id": "42"},
            search_path=search_path_value("tenant_b", "public"),
            statement_timeout="2s",
        )
        assert tuple(conn.execute(show).one()) == ('"tenant_b", "public"', "2s", "42")
        conn.commit()
        assert tuple(conn.execute(show).one()) == (DEFAULT_PATH, "30s", "")


def test_set_local_refuses_autocommit(pg_sync_engine: sa.Engine) -> None:
    with (
        pg_sync_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn,
        pytest.raises(ValueError, match="on an AUTOCOMMIT connection"),
    ):
        set_local(conn, statement_timeout=100)


async def test_aset_local_refuses_autocommit(pg_engine: AsyncEngine) -> None:
    async with pg_engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        with pytest.raises(ValueError, match="on an AUTOCOMMIT connection"):
            await aset_local(conn, statement_timeout=100)


# --- statement_timeout: per connection (SessionSettings) and per transaction (SET LOCAL) -------

SLEEP = sa.text("SELECT pg_sleep(10)")
TIMEOUT_MESSAGE = "canceling statement due to statement timeout"
# SQLSTATE 57014, per driver: the SQLAlchemy exception and the driver's own exception. asyncpg's
# arrives as a plain DBAPIError: `except OperationalError` misses it; test the SQLSTATE instead.
TIMEOUT_ERRORS: dict[str, tuple[type[sa.exc.DBAPIError], str]] = {
    "asyncpg": (sa.exc.DBAPIError, "asyncpg.exceptions.QueryCanceledError"),
    "psycopg": (sa.exc.OperationalError, "psycopg.errors.QueryCanceled"),
    "psycopg2": (sa.exc.OperationalError, "psycopg2.errors.QueryCanceled"),
    "pg8000": (sa.exc.ProgrammingError, "pg8000.dbapi.ProgrammingError"),
}


def _driver_error(error: sa.exc.DBAPIError) -> BaseException:
    """The driver's own exception (SQLAlchemy's asyncpg adapter wraps it once more)."""
    orig = error.orig
    assert orig is not None
    return orig.__cause__ if orig.__cause__ is not None else orig


def _name(error: BaseException) -> str:
    return f"{type(error).__module__}.{type(error).__qualname__}"


def _sqlstate(error: BaseException) -> str | None:
    """The SQLSTATE a driver's exception carries, however the driver spells it."""
    for attribute in ("sqlstate", "pgcode"):
        value = getattr(error, attribute, None)
        if value:
            return str(value)
    args = getattr(error, "args", ())
    return args[0].get("C") if args and isinstance(args[0], dict) else None


def _assert_statement_timeout(error: sa.exc.DBAPIError, driver: str, started: float) -> None:
    assert time.monotonic() - started < 5, "pg_sleep(10) was not cancelled in time"
    wrapper, driver_error = TIMEOUT_ERRORS[driver]
    assert (type(error), _name(_driver_error(error))) == (wrapper, driver_error), repr(error)
    assert TIMEOUT_MESSAGE in str(error.orig)
    assert _sqlstate(_driver_error(error)) == "57014"
    assert not error.connection_invalidated, "a cancelled statement leaves the session usable"


SHORT_TIMEOUT = SessionSettings(application_name="orders-api timeouts", statement_timeout=200)


@pytest.mark.usefixtures("pg_sync_engine")
def test_statement_timeout_per_connection(pg_plain_database: Endpoint, pgtopo_driver: str) -> None:
    engine = create_engine(pg_plain_database, pgtopo_driver, settings=SHORT_TIMEOUT)
    try:
        with engine.connect() as conn:
            started = time.monotonic()
            with pytest.raises(sa.exc.DBAPIError) as info:
                conn.execute(SLEEP)
            _assert_statement_timeout(info.value, pgtopo_driver, started)
            conn.rollback()
            assert conn.scalar(sa.text("SHOW statement_timeout")) == "200ms"  # Every transaction.
    finally:
        engine.dispose()


@pytest.mark.usefixtures("pg_engine")
async def test_async_statement_timeout_per_connection(
    pg_plain_database: Endpoint, pgtopo_driver: str
) -> None:
    engine = create_async_engine(pg_plain_database, pgtopo_driver, settings=SHORT_TIMEOUT)
    try:
        async with engine.connect() as conn:
            started = time.monotonic()
            with pytest.raises(sa.exc.DBAPIError) as info:
                await conn.execute(SLEEP)
            _assert_statement_timeout(info.value, pgtopo_driver, started)
            await conn.rollback()
            assert await conn.scalar(sa.text("SHOW statement_timeout")) == "200ms"
    finally:
        await engine.dispose()


def _sync_set_local_timeout(engine: sa.Engine, driver: str) -> None:
    with engine.connect() as conn:
        set_local(conn, statement_timeout=200)
        started = time.monotonic()
        with pytest.raises(sa.exc.DBAPIError) as info:
            conn.execute(SLEEP)
        _assert_statement_timeout(info.value, driver, started)
        conn.rollback()
        # Only that transaction: the engine's own 30 s is back.
        assert conn.scalar(sa.text("SHOW statement_timeout")) == "30s"


async def _async_set_local_timeout(engine: AsyncEngine, driver: str) -> None:
    async with engine.connect() as conn:
        await aset_local(conn, statement_timeout=200)
        started = time.monotonic()
        with pytest.raises(sa.exc.DBAPIError) as info:
            await conn.execute(SLEEP)
        _assert_statement_timeout(info.value, driver, started)
        await conn.rollback()
        assert await conn.scalar(sa.text("SHOW statement_timeout")) == "30s"


def test_statement_timeout_per_transaction(pg_sync_engine: sa.Engine, pgtopo_driver: str) -> None:
    _sync_set_local_timeout(pg_sync_engine, pgtopo_driver)


def test_statement_timeout_per_transaction_through_pgbouncer(
    pgbouncer_sync_engine: sa.Engine, pgtopo_driver: str
) -> None:
    _sync_set_local_timeout(pgbouncer_sync_engine, pgtopo_driver)


async def test_async_statement_timeout_per_transaction(
    pg_engine: AsyncEngine, pgtopo_driver: str
) -> None:
    await _async_set_local_timeout(pg_engine, pgtopo_driver)


async def test_async_statement_timeout_per_transaction_through_pgbouncer(
    pgbouncer_engine: AsyncEngine, pgtopo_driver: str
) -> None:
    await _async_set_local_timeout(pgbouncer_engine, pgtopo_driver)


# --- idle_in_transaction_session_timeout ------------------------------------------------------

IDLE_TIMEOUT = SessionSettings(
    application_name="orders-api idle", idle_in_transaction_session_timeout=200
)
IDLE_MESSAGE = "terminating connection due to idle-in-transaction timeout"
# What each driver reports on the next statement: the server's FATAL message when the driver
# reads it before noticing the closed socket, else its own connection-closed error.
IDLE_ERRORS: dict[str, tuple[type[sa.exc.DBAPIError], str, str]] = {
    "asyncpg": (
        sa.exc.InterfaceError,
        "asyncpg.exceptions._base.InterfaceError",
        "connection is closed",
    ),
    "psycopg": (
        sa.exc.InternalError,
        "psycopg.errors.IdleInTransactionSessionTimeout",
        IDLE_MESSAGE,
    ),
    "psycopg2": (
        sa.exc.OperationalError,
        "psycopg2.OperationalError",
        "server closed the connection unexpectedly",
    ),
    "pg8000": (sa.exc.InterfaceError, "pg8000.exceptions.InterfaceError", "network error"),
}


async def _wait_until_gone(topology: PlainTopology, pid: int, timeout: float = 15.0) -> None:
    """Poll pg_stat_activity from the admin connection until backend `pid` has exited."""
    deadline = time.monotonic() + timeout
    while topology.server.admin.scalar(f"SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}"):
        assert time.monotonic() < deadline, f"backend {pid} still there after {timeout} s"
        await asyncio.sleep(0.02)  # Lets an async driver read what the server sends meanwhile.


def _assert_idle_timeout_error(error: sa.exc.DBAPIError, driver: str) -> None:
    wrapper, driver_error, message = IDLE_ERRORS[driver]
    assert (type(error), _name(_driver_error(error))) == (wrapper, driver_error), repr(error)
    assert message in str(error.orig), repr(error.orig)
    # The pool must see a disconnect, so it replaces the connection instead of reusing it.
    assert error.connection_invalidated, repr(error)


@pytest.mark.usefixtures("pg_sync_engine")
def test_idle_in_transaction_timeout_ends_the_session(
    pg_plain: PlainTopology, pg_plain_database: Endpoint, pgtopo_driver: str
) -> None:
    engine = create_engine(pg_plain_database, pgtopo_driver, settings=IDLE_TIMEOUT)
    try:
        with engine.connect() as conn:
            pid = conn.scalar(sa.text("SELECT pg_backend_pid()"))  # The transaction stays open.
            asyncio.run(_wait_until_gone(pg_plain, pid))
            with pytest.raises(sa.exc.DBAPIError) as info:
                conn.execute(sa.text("SELECT 1"))
            _assert_idle_timeout_error(info.value, pgtopo_driver)
        with engine.connect() as conn:  # The pool replaced it.
            assert conn.scalar(sa.text("SELECT pg_backend_pid()")) != pid
    finally:
        engine.dispose()


@pytest.mark.usefixtures("pg_engine")
async def test_async_idle_in_transaction_timeout_ends_the_session(
    pg_plain: PlainTopology, pg_plain_database: Endpoint, pgtopo_driver: str
) -> None:
    engine = create_async_engine(pg_plain_database, pgtopo_driver, settings=IDLE_TIMEOUT)
    try:
        async with engine.connect() as conn:
            pid = await conn.scalar(sa.text("SELECT pg_backend_pid()"))
            await _wait_until_gone(pg_plain, pid)
            with pytest.raises(sa.exc.DBAPIError) as info:
                await conn.execute(sa.text("SELECT 1"))
            _assert_idle_timeout_error(info.value, pgtopo_driver)
        async with engine.connect() as conn:
            assert await conn.scalar(sa.text("SELECT pg_backend_pid()")) != pid
    finally:
        await engine.dispose()


# --- application_name -------------------------------------------------------------------------

NAMES = ("orders-api", "billing-worker")
ACTIVITY = sa.text(
    "SELECT pid, application_name FROM pg_stat_activity"
    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
)


def test_application_names_tell_engines_apart(
    pg_sync_engine: sa.Engine, pg_plain_database: Endpoint, pgtopo_driver: str
) -> None:
    engines = [
        create_engine(
            pg_plain_database, pgtopo_driver, settings=SessionSettings(application_name=n)
        )
        for n in NAMES
    ]
    try:
        conns = [engine.connect() for engine in engines]
        pids = {
            conn.scalar(sa.text("SELECT pg_backend_pid()")): n
            for conn, n in zip(conns, NAMES, strict=True)
        }
        with pg_sync_engine.connect() as observer:  # A third connection.
            assert {pid: name for pid, name in observer.execute(ACTIVITY)} == pids
        for conn in conns:
            conn.close()
    finally:
        for engine in engines:
            engine.dispose()


async def test_async_application_names_tell_engines_apart(
    pg_engine: AsyncEngine, pg_plain_database: Endpoint, pgtopo_driver: str
) -> None:
    engines = [
        create_async_engine(
            pg_plain_database, pgtopo_driver, settings=SessionSettings(application_name=n)
        )
        for n in NAMES
    ]
    try:
        pids = {}
        for engine, name in zip(engines, NAMES, strict=True):
            conn = await engine.connect()
            pids[await conn.scalar(sa.text("SELECT pg_backend_pid()"))] = (name, conn)
        async with pg_engine.connect() as observer:
            seen = {pid: name for pid, name in await observer.execute(ACTIVITY)}
        assert seen == {pid: name for pid, (name, _) in pids.items()}
        for _, conn in pids.values():
            await conn.close()
    finally:
        for engine in engines:
            await engine.dispose()


def test_generic_application_name_warns_and_a_distinct_one_does_not(
    pg_sync_engine: sa.Engine, pg_plain_database: Endpoint, pgtopo_driver: str
) -> None:
    with pytest.warns(PgtopoWarning, match="'sqlalchemy' is generic: name the service") as record:
        generic = create_engine(
            pg_plain_database,
            pgtopo_driver,
            settings=SessionSettings(application_name="sqlalchemy"),
        )
    assert record[0].filename == __file__, "the warning points at the caller's line"
    with warnings.catch_warnings():
        warnings.simplefilter("error", PgtopoWarning)
        distinct = create_engine(
            pg_plain_database,
            pgtopo_driver,
            settings=SessionSettings(application_name="orders-api"),
        )
    try:
        for engine, name in ((generic, "sqlalchemy"), (distinct, "orders-api")):
            with engine.connect() as conn:  # A warning, not a refusal: the name is used.
                assert conn.scalar(sa.text("SHOW application_name")) == name
    finally:
        generic.dispose()
        distinct.dispose()
