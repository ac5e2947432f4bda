"""pytest glue: options, the driver matrix, fixtures and reporting. No process or SQL logic here."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Generator, Iterator
from typing import Any

import pytest
import pytest_asyncio
import sqlalchemy
from sqlalchemy.ext.asyncio import AsyncEngine

from . import config as config_module
from . import drivers
from .drivers import Kind
from .endpoint import Endpoint
from .errors import PgtopoError
from .isolation import (
    SchemaSource,
    begin_outer_transaction,
    rollback_engine_kwargs,
    rollback_outer_transaction,
)
from .recipes.engines import create_async_engine, create_engine
from .recipes.settings import SessionSettings
from .session import KeptDatabase, PgtopoSession
from .topologies.base import Topology
from .topologies.plain import PlainTopology

SESSION_KEY = pytest.StashKey[PgtopoSession]()
REPORTS_KEY = pytest.StashKey[dict[str, pytest.TestReport]]()

# Engine fixture name -> (topology fixture, engine kind). The driver matrix reads this table.
ENGINE_FIXTURES: dict[str, tuple[str, Kind]] = {
    "pg_engine": ("pg_plain", "async"),
    "pg_sync_engine": ("pg_plain", "sync"),
}
_LOG_TAIL_LINES = 30


# --- hooks -----------------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    config_module.add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    config.stash[SESSION_KEY] = PgtopoSession(config_module.resolve(config))


def pytest_report_header(config: pytest.Config) -> list[str]:
    session = config.stash[SESSION_KEY]
    cfg = session.config
    try:
        binaries = session.backend.binaries
        server = f"PostgreSQL {binaries.short_version} from {binaries.bindir} ({binaries.source})"
    except PgtopoError as exc:
        server = f"no PostgreSQL binaries: {str(exc).splitlines()[0]}"
    chosen = ",".join(cfg.drivers) or "defaults (asyncpg async, psycopg sync)"
    return [f"pgtopo: backend={cfg.backend}, {server}, drivers={chosen}, isolation={cfg.isolation}"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run each engine test once per selected driver that can serve all its engine fixtures."""
    kinds = _engine_kinds(metafunc.fixturenames)
    if not kinds or _parametrized_directly(metafunc):
        return
    selected = metafunc.config.stash[SESSION_KEY].config.drivers
    if not selected:
        return  # Per-fixture defaults; the pgtopo_driver fixture picks them.
    usable = [name for name in selected if all(drivers.get(name).supports(k) for k in kinds)]
    if len(selected) == 1 and usable:
        return
    if usable:
        metafunc.parametrize("pgtopo_driver", usable, indirect=True)
        return
    needed = " and ".join(sorted(kinds))
    reason = (
        f"pgtopo: no selected driver ({', '.join(selected)}) can back {needed} engines; "
        f"drivers that can: {', '.join(n for n in drivers.DRIVERS if all(drivers.get(n).supports(k) for k in kinds))}"
    )
    metafunc.parametrize(
        "pgtopo_driver",
        [pytest.param(name, marks=pytest.mark.skip(reason=reason)) for name in selected],
        indirect=True,
    )


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    item.stash.setdefault(REPORTS_KEY, {})[report.when] = report
    if report.failed:
        session = item.config.stash[SESSION_KEY]
        used = {id(value) for value in getattr(item, "funcargs", {}).values()}
        for topology in session.topologies.values():
            if id(topology) in used:
                for label, tail in topology.log_tails(_LOG_TAIL_LINES).items():
                    report.sections.append((f"pgtopo log: {label}", tail))
    return report


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    session = config.stash[SESSION_KEY]
    lines = session.keep_report() if session.config.keep else []
    lines += [
        f"kept database of failed {kept.test}: {kept.endpoint.describe()}"
        for kept in session.kept_databases
    ]
    if lines:
        terminalreporter.write_sep("=", "pgtopo: left running (--pgtopo-keep)")
        for line in lines:
            terminalreporter.write_line(line)


# --- fixtures: configuration -----------------------------------------------------------------


@pytest.fixture(scope="session")
def pgtopo_session(pytestconfig: pytest.Config) -> Iterator[PgtopoSession]:
    """The run's servers and databases; stops them all at the end of the session."""
    session = pytestconfig.stash[SESSION_KEY]
    yield session
    session.close()


@pytest.fixture(scope="session")
def pgtopo_schema() -> SchemaSource:
    """Override to load your schema into the template database once per session.

    Return a sqlalchemy.MetaData, a path to a .sql file, a callable taking a sync Engine, or None.
    """
    return None


@pytest.fixture
def pgtopo_settings(request: pytest.FixtureRequest) -> SessionSettings:
    """Server settings for engine fixtures; override to change timeouts, search_path, and so on.

    The default application_name names the xdist worker and the test, so a slow query in
    pg_stat_activity points at the test that sent it.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    name = f"pytest-pgtopo {worker} {request.node.name}"
    return SessionSettings(application_name=name[:63])


@pytest.fixture
def pgtopo_engine_kwargs() -> dict[str, Any]:
    """Extra keyword arguments for every engine fixture's create_engine() call; override freely."""
    return {}


@pytest.fixture
def pgtopo_driver(request: pytest.FixtureRequest) -> str:
    """The driver this test's engine fixtures use.

    Set by the driver matrix (--pgtopo-driver), or directly with
    ``@pytest.mark.parametrize("pgtopo_driver", ["psycopg2"])``; otherwise the default:
    asyncpg when the test uses only async engines, psycopg when it uses any sync engine.
    """
    if hasattr(request, "param"):
        return str(request.param)
    selected = request.config.stash[SESSION_KEY].config.drivers
    if len(selected) == 1:
        return selected[0]
    kinds = _engine_kinds(request.fixturenames)
    return drivers.DEFAULT_DRIVER["async" if kinds == {"async"} else "sync"]


# --- fixtures: topologies --------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_plain(pgtopo_session: PgtopoSession) -> PlainTopology:
    """One PostgreSQL server, started on first use and stopped at the end of the session."""
    topology = pgtopo_session.topology("plain")
    assert isinstance(topology, PlainTopology)
    return topology


@pytest.fixture
def pg_plain_database(
    request: pytest.FixtureRequest,
    pg_plain: PlainTopology,
    pgtopo_session: PgtopoSession,
    pgtopo_schema: SchemaSource,
) -> Iterator[Endpoint]:
    """The endpoint of this test's own database on pg_plain (shared one in rollback mode)."""
    yield from _test_database(request, pgtopo_session, pg_plain, pgtopo_schema)


# --- fixtures: engines -----------------------------------------------------------------------


@pytest.fixture
def pg_sync_engine(
    pg_plain_database: Endpoint,
    pgtopo_driver: str,
    pgtopo_settings: SessionSettings,
    pgtopo_engine_kwargs: dict[str, Any],
    pgtopo_session: PgtopoSession,
) -> Iterator[sqlalchemy.Engine]:
    """A sync Engine on this test's database of pg_plain, built by pytest_pgtopo.create_engine."""
    yield from _sync_engine(
        pg_plain_database, pgtopo_driver, pgtopo_settings, pgtopo_engine_kwargs, pgtopo_session
    )


@pytest_asyncio.fixture
async def pg_engine(
    pg_plain_database: Endpoint,
    pgtopo_driver: str,
    pgtopo_settings: SessionSettings,
    pgtopo_engine_kwargs: dict[str, Any],
    pgtopo_session: PgtopoSession,
) -> AsyncIterator[AsyncEngine]:
    """An AsyncEngine on this test's database of pg_plain, built by create_async_engine."""
    async for engine in _async_engine(
        pg_plain_database, pgtopo_driver, pgtopo_settings, pgtopo_engine_kwargs, pgtopo_session
    ):
        yield engine


# --- helpers ---------------------------------------------------------------------------------


def _engine_kinds(fixturenames: list[str]) -> set[Kind]:
    return {ENGINE_FIXTURES[name][1] for name in fixturenames if name in ENGINE_FIXTURES}


def _parametrized_directly(metafunc: pytest.Metafunc) -> bool:
    for marker in metafunc.definition.iter_markers("parametrize"):
        argnames = marker.args[0] if marker.args else marker.kwargs.get("argnames", "")
        names = argnames.split(",") if isinstance(argnames, str) else list(argnames)
        if "pgtopo_driver" in (name.strip() for name in names):
            return True
    return False


def _test_database(
    request: pytest.FixtureRequest,
    session: PgtopoSession,
    topology: Topology,
    schema: SchemaSource,
) -> Iterator[Endpoint]:
    databases = session.databases(topology.name)
    if session.config.isolation == "rollback":
        yield topology.client_endpoint.with_dbname(databases.shared(schema))
        return
    name = databases.create(request.node.name, schema)
    endpoint = topology.client_endpoint.with_dbname(name)
    yield endpoint
    if session.config.keep and _failed(request.node):
        session.kept_databases.append(KeptDatabase(request.node.nodeid, endpoint))
    else:
        databases.drop_later(name)


def _failed(item: pytest.Item) -> bool:
    reports = item.stash.get(REPORTS_KEY, {})
    return any(report.failed for report in reports.values())


def _sync_engine(
    endpoint: Endpoint,
    driver: str,
    settings: SessionSettings,
    engine_kwargs: dict[str, Any],
    session: PgtopoSession,
) -> Iterator[sqlalchemy.Engine]:
    rollback = session.config.isolation == "rollback"
    kwargs = {**engine_kwargs, **(rollback_engine_kwargs() if rollback else {})}
    engine = _build(create_engine, endpoint, driver, settings, kwargs)
    try:
        if rollback:
            with engine.connect() as connection:
                begin_outer_transaction(connection)
        yield engine
        if rollback:
            with engine.connect() as connection:
                rollback_outer_transaction(connection)
    finally:
        engine.dispose()


async def _async_engine(
    endpoint: Endpoint,
    driver: str,
    settings: SessionSettings,
    engine_kwargs: dict[str, Any],
    session: PgtopoSession,
) -> AsyncIterator[AsyncEngine]:
    rollback = session.config.isolation == "rollback"
    kwargs = {**engine_kwargs, **(rollback_engine_kwargs() if rollback else {})}
    engine = _build(create_async_engine, endpoint, driver, settings, kwargs)
    try:
        if rollback:
            async with engine.connect() as connection:
                await connection.run_sync(begin_outer_transaction)
        yield engine
        if rollback:
            async with engine.connect() as connection:
                await connection.run_sync(rollback_outer_transaction)
    finally:
        await engine.dispose()


def _build(
    factory: Any, endpoint: Endpoint, driver: str, settings: SessionSettings, kwargs: dict[str, Any]
) -> Any:
    try:
        return factory(endpoint, driver, settings=settings, **kwargs)
    except PgtopoError as exc:
        # A driver asked for explicitly that cannot serve this fixture: fail the setup, say why.
        pytest.fail(f"pytest-pgtopo: {exc}", pytrace=False)
