"""pytest glue: options, hooks, fixtures and reporting.

Thin on purpose: the driver matrix is planned in matrix.py, servers are started by the session
and its backend, per-test databases live in databases.py and rollback.py. What is left here is
what only pytest can do: parametrize, skip, fail a setup, add report sections.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import pytest
import pytest_asyncio
import sqlalchemy
from sqlalchemy.ext.asyncio import AsyncEngine

from . import config as config_module
from . import matrix
from .audit import AuditListener
from .credentials import TokenIssuer
from .databases import SchemaLoadError
from .endpoint import Endpoint, MultiHostEndpoint
from .errors import ConfigError, PgtopoError, TopologyUnavailableError
from .loadprobe import LoadProbe
from .recipes.engines import create_async_engine, create_engine
from .recipes.pooler import Pooler
from .recipes.settings import SessionSettings
from .rollback import begin_outer_transaction, rollback_engine_kwargs, rollback_outer_transaction
from .servers.watchdog import OWNER_ENV
from .session import KeptDatabase, PgtopoSession
from .topologies.base import Topology
from .topologies.bouncer import BouncerOptions, BouncerTopology
from .topologies.ha import HaTopology
from .topologies.plain import PlainTopology
from .topologies.proxied import ProxiedEndpoint
from .topologies.replica import ReplicaTopology
from .topologies.tls import TlsOptions, TlsTopology
from .types import SchemaSource

T = TypeVar("T")

SESSION_KEY = pytest.StashKey[PgtopoSession]()
REPORTS_KEY = pytest.StashKey[dict[str, pytest.TestReport]]()
AUDIT_KEY = pytest.StashKey[AuditListener]()


_LOG_TAIL_LINES = 30


# --- hooks -----------------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    config_module.add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    if "PYTEST_XDIST_WORKER" not in os.environ:
        # The run's owner: every watchdog of this run (xdist workers' too) stops its servers
        # when this process is gone, not only when its own pytest process is.
        os.environ[OWNER_ENV] = str(os.getpid())
    try:
        session = PgtopoSession(config_module.resolve(config))
        if session.config.pg_version:
            session.server_builds()  # A version that is not installed: a usage error, now.
        session.check_docker()  # docker with no engine reachable: a usage error, now.
        cache = session.schema_cache()
        if cache is not None:
            cache.check()  # An unwritable cache directory: a usage error, now.
    except ConfigError as exc:
        raise pytest.UsageError(str(exc)) from None
    config.stash[SESSION_KEY] = session
    if session.config.audit != "off":
        # Class-level listeners: every Engine the run creates, the application's own included.
        listener = AuditListener(session.audit_report, session.audit_target)
        listener.attach(sqlalchemy.Engine)
        config.stash[AUDIT_KEY] = listener


def pytest_unconfigure(config: pytest.Config) -> None:
    listener = config.stash.get(AUDIT_KEY, None)
    if listener is not None:
        listener.detach(sqlalchemy.Engine)


def pytest_report_header(config: pytest.Config) -> list[str]:
    session = config.stash[SESSION_KEY]
    cfg = session.config
    chosen = ",".join(cfg.driver) or "defaults (asyncpg async, psycopg sync)"
    where = session.describe_backends()
    return [f"pgtopo: backend={where}, drivers={chosen}, isolation={cfg.isolation}"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run each topology test once per selected PostgreSQL version, and each engine test once
    per selected driver that can serve all its engine fixtures."""
    session = metafunc.config.stash[SESSION_KEY]
    # Only a version option can make more than one server: without it, no discovery here.
    selected = session.pg_majors() if session.config.pg_version else []
    majors = matrix.version_plan(selected, metafunc.fixturenames)
    if majors and not _parametrized_directly(metafunc, "pgtopo_pg_version"):
        ids = [matrix.version_id(major) for major in majors]
        metafunc.parametrize("pgtopo_pg_version", majors, indirect=True, scope="session", ids=ids)
    needs = matrix.needs_of(metafunc.fixturenames)
    if not needs or _parametrized_directly(metafunc, "pgtopo_driver"):
        return
    plan = matrix.plan(session.config.driver, needs)
    marks = [pytest.mark.skip(reason=plan.skip_reason)] if plan.skip_reason else []
    if plan.drivers:
        params = [pytest.param(name, marks=marks) for name in plan.drivers]
        metafunc.parametrize("pgtopo_driver", params, indirect=True)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    # Before fixtures are set up: a pair a previous test promoted or stopped is rebuilt.
    if {"pg_replica_pair", "pg_ha"} & set(getattr(item, "fixturenames", ())):
        item.config.stash[SESSION_KEY].restore_replica_pairs()


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
                    if tail:  # An external server's log is not ours to read.
                        report.sections.append((f"pgtopo log: {label}", tail))
    return report


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    session = config.stash[SESSION_KEY]
    if session.audit_findings:
        terminalreporter.write_sep("=", f"pgtopo audit: {len(session.audit_findings)} finding(s)")
        for where, finding in session.audit_findings:
            terminalreporter.write_line(f"{where} {finding}")
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
    selected = request.config.stash[SESSION_KEY].config.driver
    return matrix.default_driver(selected, matrix.needs_of(request.fixturenames))


# --- fixtures: topologies --------------------------------------------------------------------


@pytest.fixture(scope="session")
def pgtopo_pg_version(request: pytest.FixtureRequest, pgtopo_session: PgtopoSession) -> int | None:
    """The PostgreSQL major this test's topologies run (None with the external backend).

    Set per test by --pgtopo-pg-version NN,NN|all (test ids pg15, pg18), or directly with
    ``@pytest.mark.parametrize("pgtopo_pg_version", [18], indirect=True)``.
    """
    if hasattr(request, "param"):
        return int(request.param)
    with _skip_if_unavailable():
        majors = pgtopo_session.pg_majors()
    return majors[0] if majors else None


@pytest.fixture(scope="session")
@matrix.topology_fixture
def pg_plain(pgtopo_session: PgtopoSession, pgtopo_pg_version: int | None) -> PlainTopology:
    """One PostgreSQL server, started on first use and stopped at the end of the session."""
    topology = _topology(pgtopo_session, "plain", pgtopo_pg_version)
    assert isinstance(topology, PlainTopology)
    return topology


@pytest.fixture(scope="session")
@matrix.topology_fixture
def pg_bouncer(pgtopo_session: PgtopoSession, pgtopo_pg_version: int | None) -> BouncerTopology:
    """PgBouncer in transaction-pool mode in front of its own PostgreSQL server."""
    topology = _topology(pgtopo_session, "bouncer", pgtopo_pg_version)
    assert isinstance(topology, BouncerTopology)
    return topology


@pytest.fixture(scope="session")
@matrix.topology_fixture
def pg_bouncer_factory(
    pgtopo_session: PgtopoSession, pgtopo_pg_version: int | None
) -> Callable[..., BouncerTopology]:
    """Build PgBouncer topologies with other options, for your own session fixtures::

        @pytest.fixture(scope="session")
        def session_pooled(pg_bouncer_factory):
            return pg_bouncer_factory(pool_mode="session", default_pool_size=2,
                                      extra_settings={"server_idle_timeout": "5"})

    Keyword arguments are BouncerOptions fields; equal options share one topology, and every
    topology stops at the end of the session.
    """

    def build(**options: Any) -> BouncerTopology:
        with _skip_if_unavailable():
            return pgtopo_session.custom_bouncer(BouncerOptions(**options), pgtopo_pg_version)

    return build


@pytest.fixture(scope="session")
@matrix.topology_fixture
def pg_tls(pgtopo_session: PgtopoSession, pgtopo_pg_version: int | None) -> TlsTopology:
    """A server that accepts TLS only; its certificate comes from a trustme CA at `.ca_path`."""
    topology = _topology(pgtopo_session, "tls", pgtopo_pg_version)
    assert isinstance(topology, TlsTopology)
    return topology


@pytest.fixture(scope="session")
@matrix.topology_fixture
def pg_tls_factory(
    pgtopo_session: PgtopoSession, pgtopo_pg_version: int | None
) -> Callable[..., TlsTopology]:
    """Build TLS topologies with other options (TlsOptions fields)::

    @pytest.fixture(scope="session")
    def mtls(pg_tls_factory):
        return pg_tls_factory(client_certificates=True)
    """

    def build(**options: Any) -> TlsTopology:
        with _skip_if_unavailable():
            return pgtopo_session.custom_tls(TlsOptions(**options), pgtopo_pg_version)

    return build


@pytest.fixture(scope="session")
@matrix.topology_fixture
def pg_replica_pair(
    pgtopo_session: PgtopoSession, pgtopo_pg_version: int | None
) -> ReplicaTopology:
    """A primary and a streaming hot-standby replica, with `.stable` following the primary.

    A test may promote() or stop_primary(): the next test that asks for the pair gets a
    freshly built one.
    """
    topology = _topology(pgtopo_session, "replica", pgtopo_pg_version)
    assert isinstance(topology, ReplicaTopology)
    return topology


@pytest.fixture(scope="session")
@matrix.topology_fixture
def pg_ha(pgtopo_session: PgtopoSession, pgtopo_pg_version: int | None) -> HaTopology:
    """pg_replica_pair behind a real HAProxy that routes by asking each node (agent-check):
    `.primary_endpoint` leads to the primary, `.read_endpoint` to the standbys. Skips, saying
    `apt-get install haproxy`, where HAProxy is missing. A test may promote, stop, rejoin:
    the next test that asks for it gets a fresh pair."""
    topology = _topology(pgtopo_session, "ha", pgtopo_pg_version)
    assert isinstance(topology, HaTopology)
    return topology


@pytest.fixture(scope="session")
def pg_tls_sidecar(pg_tls: TlsTopology) -> Iterator[ProxiedEndpoint]:
    """A Cloud SQL Auth Proxy-style sidecar: `.endpoint` is plaintext on 127.0.0.1, and the
    proxy speaks verify-full TLS to pg_tls. `.proxy` injects faults too."""
    sidecar = ProxiedEndpoint(pg_tls.primary, tls_upstream=True)
    yield sidecar
    sidecar.close()


@pytest.fixture
def pg_fault_proxy() -> Iterator[Callable[[Endpoint], ProxiedEndpoint]]:
    """Put a fault-injecting proxy in front of any endpoint, like Toxiproxy without Docker::

        def test_cut(pg_fault_proxy, pg_plain_database):
            faulty = pg_fault_proxy(pg_plain_database)
            engine = create_engine(faulty.endpoint, "psycopg")
            faulty.cut()             # also: faulty.proxy.latency = 0.2; faulty.refuse(); faulty.restore()
                                     # faulty.proxy.swallow(): a black hole (nothing closes)

    Every proxy made here closes at the end of the test.
    """
    made: list[ProxiedEndpoint] = []

    def make(endpoint: Endpoint) -> ProxiedEndpoint:
        made.append(ProxiedEndpoint(endpoint))
        return made[-1]

    yield make
    for proxied in made:
        proxied.close()


@pytest.fixture
def pg_load_probe() -> Iterator[Callable[..., LoadProbe]]:
    """Make load probes (`pg_load_probe(engine, readers=1)`) on any sync or async engine; each
    is stopped at the end of the test even if the test forgot to::

        def test_crash(pg_load_probe, ha_sync_engine, pg_ha):
            with pg_load_probe(ha_sync_engine) as probe:
                probe.wait_for_acks(20)
                pg_ha.stop_primary("immediate"); pg_ha.promote()
                probe.wait_recovered()
            assert probe.report().lost == []
    """
    made: list[LoadProbe] = []

    def make(engine: Any, **options: Any) -> LoadProbe:
        made.append(LoadProbe(engine, **options))
        return made[-1]

    yield make
    for probe in made:
        probe.halt()


@pytest.fixture
def pg_token_issuer(pg_plain_database: Endpoint) -> Iterator[TokenIssuer]:
    """A login role on this test's database whose passwords expire, like RDS IAM tokens:
    `issue(ttl)` returns a fresh one, `endpoint(token)` connects with it."""
    with TokenIssuer(pg_plain_database) as issuer:
        yield issuer


@pytest.fixture
def pg_plain_database(
    request: pytest.FixtureRequest,
    pg_plain: PlainTopology,
    pgtopo_session: PgtopoSession,
    pgtopo_schema: SchemaSource,
) -> Iterator[Endpoint]:
    """The endpoint of this test's own database on pg_plain (shared one in rollback mode)."""
    yield from _test_database(request, pgtopo_session, pg_plain, pgtopo_schema)


@pytest.fixture(scope="session")
def pg_plain_shared_database(
    pg_plain: PlainTopology, pgtopo_session: PgtopoSession, pgtopo_schema: SchemaSource
) -> Endpoint:
    """One database on pg_plain with the schema loaded, shared by the whole session (dropped at
    its end): for session-scoped engines or expensive read-mostly data. Not isolated: every test
    using it sees the others' committed writes (per-test isolation is pg_plain_database)."""
    with _skip_if_unavailable():
        name = pgtopo_session.databases(pg_plain).shared(pgtopo_schema)
    return pg_plain.primary.with_dbname(name)


@pytest.fixture
def pg_bouncer_database(
    request: pytest.FixtureRequest,
    pg_bouncer: BouncerTopology,
    pgtopo_session: PgtopoSession,
    pgtopo_schema: SchemaSource,
    pgtopo_settings: SessionSettings,
) -> Iterator[Endpoint]:
    """This test's database, reached through pg_bouncer.

    The settings a transaction pooler refuses at startup (search_path, statement_timeout, ...)
    are made durable on the database with ALTER DATABASE ... SET, as production should do.
    """
    yield from _test_database(
        request, pgtopo_session, pg_bouncer, pgtopo_schema, durable=pgtopo_settings
    )


@pytest.fixture
def pg_tls_database(
    request: pytest.FixtureRequest,
    pg_tls: TlsTopology,
    pgtopo_session: PgtopoSession,
    pgtopo_schema: SchemaSource,
) -> Iterator[Endpoint]:
    """This test's database on pg_tls; the endpoint verifies the server (verify-full)."""
    yield from _test_database(request, pgtopo_session, pg_tls, pgtopo_schema)


@pytest.fixture
def pg_replica_database(
    request: pytest.FixtureRequest,
    pg_replica_pair: ReplicaTopology,
    pgtopo_session: PgtopoSession,
    pgtopo_schema: SchemaSource,
) -> Iterator[Endpoint]:
    """This test's database, created on the primary and already replayed on the replica;
    the endpoint is the primary's (`pg_replica_pair.replica.with_dbname(...)` for the other).

    Refused in rollback isolation: the replica would never see the test's uncommitted work."""
    if pgtopo_session.config.isolation == "rollback":
        pytest.fail(
            "pytest-pgtopo: --pgtopo-isolation=rollback cannot serve pg_replica_pair: a replica "
            "only sees committed transactions, and rollback isolation never commits a test's "
            "work (it stays in an outer transaction that is rolled back), so the replica would "
            "never see it. Run the replica tests with --pgtopo-isolation=database (the default), "
            "in a pytest run of their own (say `pytest tests/replica`), and the rest in rollback.",
            pytrace=False,
        )
    yield from _test_database(
        request,
        pgtopo_session,
        pg_replica_pair,
        pgtopo_schema,
        after_create=pg_replica_pair.wait_for_replay,
    )


@pytest.fixture
def pg_ha_database(
    request: pytest.FixtureRequest,
    pg_ha: HaTopology,
    pgtopo_session: PgtopoSession,
    pgtopo_schema: SchemaSource,
) -> Iterator[Endpoint]:
    """This test's database on pg_ha, replayed on the standby; the endpoint is HAProxy's
    primary listener (`pg_ha.read_endpoint.with_dbname(...)` for the standbys)."""
    if pgtopo_session.config.isolation == "rollback":
        pytest.fail(
            "pytest-pgtopo: --pgtopo-isolation=rollback cannot serve pg_ha: a standby only sees "
            "committed work; run the HA tests with --pgtopo-isolation=database (the default).",
            pytrace=False,
        )
    yield from _test_database(
        request, pgtopo_session, pg_ha, pgtopo_schema, after_create=pg_ha.wait_for_replay
    )


# --- fixtures: engines -----------------------------------------------------------------------
# Engine fixtures do not name a topology or database fixture as an argument: pytest would set
# those up first (session-scoped ones before anything else), starting servers for a test whose
# driver cannot run. pgtopo_engine_recipe checks the driver; only then do the _pgtopo_*_engines
# fixtures below set up the topology and this test's database (request.getfixturevalue). Their
# value is the topology, so a failed test still gets its server logs (pytest_runtest_makereport).


@pytest.fixture
def pgtopo_engine_recipe(
    request: pytest.FixtureRequest,
    pgtopo_driver: str,
    pgtopo_settings: SessionSettings,
    pgtopo_engine_kwargs: dict[str, Any],
    pgtopo_session: PgtopoSession,
) -> EngineRecipe:
    """What every engine fixture of this test is built from: driver, settings, kwargs, isolation.

    A driver that cannot serve one of the test's engine fixtures (psycopg2 for pg_engine) fails
    the setup here, once, before any server starts.
    """
    problem = matrix.driver_problem(pgtopo_driver, request.fixturenames)
    if problem is not None:
        pytest.fail(f"pytest-pgtopo: {problem}", pytrace=False)
    return EngineRecipe(
        pgtopo_driver,
        pgtopo_settings,
        pgtopo_engine_kwargs,
        rollback=pgtopo_session.config.isolation == "rollback",
    )


def _after_the_driver_check(request: pytest.FixtureRequest, topology: str, database: str) -> Any:
    """Set up fixture `topology` and this test's `database` on it; return the topology."""
    if topology in ("pg_replica_pair", "pg_ha"):  # What pytest_runtest_setup does for them.
        request.config.stash[SESSION_KEY].restore_replica_pairs()
    value = request.getfixturevalue(topology)
    request.getfixturevalue(database)
    return value


# pgtopo_pg_version is an argument so that --pgtopo-pg-version can parametrize engine tests
# (matrix.version_plan counts engine fixtures as fixtures that start a topology).
@pytest.fixture
def _pgtopo_plain_engines(
    request: pytest.FixtureRequest,
    pgtopo_engine_recipe: EngineRecipe,
    pgtopo_pg_version: int | None,
) -> PlainTopology:
    """pg_plain, with pg_plain_database set up, once the driver passed its check."""
    return cast(PlainTopology, _after_the_driver_check(request, "pg_plain", "pg_plain_database"))


@pytest.fixture
def _pgtopo_bouncer_engines(
    request: pytest.FixtureRequest,
    pgtopo_engine_recipe: EngineRecipe,
    pgtopo_pg_version: int | None,
) -> BouncerTopology:
    """pg_bouncer, with pg_bouncer_database set up, once the driver passed its check."""
    topology = _after_the_driver_check(request, "pg_bouncer", "pg_bouncer_database")
    return cast(BouncerTopology, topology)


@pytest.fixture
def _pgtopo_tls_engines(
    request: pytest.FixtureRequest,
    pgtopo_engine_recipe: EngineRecipe,
    pgtopo_pg_version: int | None,
) -> TlsTopology:
    """pg_tls, with pg_tls_database set up, once the driver passed its check."""
    return cast(TlsTopology, _after_the_driver_check(request, "pg_tls", "pg_tls_database"))


@pytest.fixture
def _pgtopo_replica_engines(
    request: pytest.FixtureRequest,
    pgtopo_engine_recipe: EngineRecipe,
    pgtopo_pg_version: int | None,
) -> ReplicaTopology:
    """pg_replica_pair, with pg_replica_database set up, once the driver passed its check."""
    topology = _after_the_driver_check(request, "pg_replica_pair", "pg_replica_database")
    return cast(ReplicaTopology, topology)


@pytest.fixture
def _pgtopo_ha_engines(
    request: pytest.FixtureRequest,
    pgtopo_engine_recipe: EngineRecipe,
    pgtopo_pg_version: int | None,
) -> HaTopology:
    """pg_ha, with pg_ha_database set up, once the driver passed its check."""
    return cast(HaTopology, _after_the_driver_check(request, "pg_ha", "pg_ha_database"))


def _database(request: pytest.FixtureRequest, name: str) -> Endpoint:
    """This test's database fixture `name`, already set up by a _pgtopo_*_engines fixture (so
    an async engine fixture only looks it up, never sets up fixtures inside its event loop)."""
    return cast(Endpoint, request.getfixturevalue(name))


@pytest.fixture
@matrix.engine_fixture("sync")
def pg_sync_engine(
    request: pytest.FixtureRequest,
    _pgtopo_plain_engines: PlainTopology,
    pgtopo_engine_recipe: EngineRecipe,
) -> Iterator[sqlalchemy.Engine]:
    """A sync Engine on this test's database of pg_plain, built by pytest_pgtopo.create_engine."""
    yield from pgtopo_engine_recipe.sync_engine(_database(request, "pg_plain_database"))


@pytest_asyncio.fixture
@matrix.engine_fixture("async")
async def pg_engine(
    request: pytest.FixtureRequest,
    _pgtopo_plain_engines: PlainTopology,
    pgtopo_engine_recipe: EngineRecipe,
) -> AsyncIterator[AsyncEngine]:
    """An AsyncEngine on this test's database of pg_plain, built by create_async_engine."""
    async for engine in pgtopo_engine_recipe.async_engine(_database(request, "pg_plain_database")):
        yield engine


@pytest.fixture
@matrix.engine_fixture("sync")
def pgbouncer_sync_engine(
    request: pytest.FixtureRequest,
    _pgtopo_bouncer_engines: BouncerTopology,
    pgtopo_engine_recipe: EngineRecipe,
) -> Iterator[sqlalchemy.Engine]:
    """A sync Engine through pg_bouncer, built with create_engine(..., pooler=pg_bouncer.pooler):
    prepared statements stay on where that PgBouncer tracks them and the driver is proven safe."""
    yield from pgtopo_engine_recipe.sync_engine(
        _database(request, "pg_bouncer_database"), pooler=_pgtopo_bouncer_engines.pooler
    )


@pytest_asyncio.fixture
@matrix.engine_fixture("async")
async def pgbouncer_engine(
    request: pytest.FixtureRequest,
    _pgtopo_bouncer_engines: BouncerTopology,
    pgtopo_engine_recipe: EngineRecipe,
) -> AsyncIterator[AsyncEngine]:
    """An AsyncEngine through pg_bouncer, built with create_async_engine(...,
    pooler=pg_bouncer.pooler)."""
    async for engine in pgtopo_engine_recipe.async_engine(
        _database(request, "pg_bouncer_database"), pooler=_pgtopo_bouncer_engines.pooler
    ):
        yield engine


@pytest.fixture
@matrix.engine_fixture("sync")
def tls_sync_engine(
    request: pytest.FixtureRequest,
    _pgtopo_tls_engines: TlsTopology,
    pgtopo_engine_recipe: EngineRecipe,
) -> Iterator[sqlalchemy.Engine]:
    """A sync Engine on pg_tls over TLS with verify-full, whatever the driver."""
    yield from pgtopo_engine_recipe.sync_engine(_database(request, "pg_tls_database"))


@pytest_asyncio.fixture
@matrix.engine_fixture("async")
async def tls_engine(
    request: pytest.FixtureRequest,
    _pgtopo_tls_engines: TlsTopology,
    pgtopo_engine_recipe: EngineRecipe,
) -> AsyncIterator[AsyncEngine]:
    """An AsyncEngine on pg_tls over TLS with verify-full (asyncpg: an SSLContext)."""
    async for engine in pgtopo_engine_recipe.async_engine(_database(request, "pg_tls_database")):
        yield engine


@pytest.fixture
@matrix.engine_fixture("sync")
def primary_sync_engine(
    request: pytest.FixtureRequest,
    _pgtopo_replica_engines: ReplicaTopology,
    pgtopo_engine_recipe: EngineRecipe,
) -> Iterator[sqlalchemy.Engine]:
    """A sync Engine on the pair's primary, for writes."""
    yield from pgtopo_engine_recipe.sync_engine(_database(request, "pg_replica_database"))


@pytest_asyncio.fixture
@matrix.engine_fixture("async")
async def primary_engine(
    request: pytest.FixtureRequest,
    _pgtopo_replica_engines: ReplicaTopology,
    pgtopo_engine_recipe: EngineRecipe,
) -> AsyncIterator[AsyncEngine]:
    """An AsyncEngine on the pair's primary, for writes."""
    database = _database(request, "pg_replica_database")
    async for engine in pgtopo_engine_recipe.async_engine(database):
        yield engine


@pytest.fixture
@matrix.engine_fixture("sync")
def replica_sync_engine(
    request: pytest.FixtureRequest,
    _pgtopo_replica_engines: ReplicaTopology,
    pgtopo_engine_recipe: EngineRecipe,
) -> Iterator[sqlalchemy.Engine]:
    """A sync Engine on the replica, read-only by default (default_transaction_read_only)."""
    dbname = _database(request, "pg_replica_database").dbname
    replica = _pgtopo_replica_engines.replica.with_dbname(dbname)
    yield from pgtopo_engine_recipe.sync_engine(replica, read_only=True)


@pytest_asyncio.fixture
@matrix.engine_fixture("async")
async def replica_engine(
    request: pytest.FixtureRequest,
    _pgtopo_replica_engines: ReplicaTopology,
    pgtopo_engine_recipe: EngineRecipe,
) -> AsyncIterator[AsyncEngine]:
    """An AsyncEngine on the replica, read-only by default (default_transaction_read_only)."""
    dbname = _database(request, "pg_replica_database").dbname
    replica = _pgtopo_replica_engines.replica.with_dbname(dbname)
    async for engine in pgtopo_engine_recipe.async_engine(replica, read_only=True):
        yield engine


@pytest.fixture
@matrix.engine_fixture("sync", multi_host=True)
def failover_sync_engine(
    request: pytest.FixtureRequest,
    _pgtopo_replica_engines: ReplicaTopology,
    pgtopo_engine_recipe: EngineRecipe,
) -> Iterator[sqlalchemy.Engine]:
    """A sync Engine on both hosts with target_session_attrs=read-write and pool_pre_ping:
    it lands on whichever node is the primary. pg8000 cannot (no multi-host support)."""
    dbname = _database(request, "pg_replica_database").dbname
    both = _pgtopo_replica_engines.multi_host().with_dbname(dbname)
    yield from pgtopo_engine_recipe.sync_engine(both)


@pytest_asyncio.fixture
@matrix.engine_fixture("async", multi_host=True)
async def failover_engine(
    request: pytest.FixtureRequest,
    _pgtopo_replica_engines: ReplicaTopology,
    pgtopo_engine_recipe: EngineRecipe,
) -> AsyncIterator[AsyncEngine]:
    """An AsyncEngine on both hosts with target_session_attrs=read-write and pool_pre_ping."""
    dbname = _database(request, "pg_replica_database").dbname
    both = _pgtopo_replica_engines.multi_host().with_dbname(dbname)
    async for engine in pgtopo_engine_recipe.async_engine(both):
        yield engine


@pytest.fixture
@matrix.engine_fixture("sync")
def ha_sync_engine(
    request: pytest.FixtureRequest,
    _pgtopo_ha_engines: HaTopology,
    pgtopo_engine_recipe: EngineRecipe,
) -> Iterator[sqlalchemy.Engine]:
    """A sync Engine on this test's database through pg_ha's HAProxy primary listener, with
    pool_pre_ping: after a failover its next checkout lands on the new primary."""
    yield from pgtopo_engine_recipe.sync_engine(_database(request, "pg_ha_database"))


@pytest_asyncio.fixture
@matrix.engine_fixture("async")
async def ha_engine(
    request: pytest.FixtureRequest,
    _pgtopo_ha_engines: HaTopology,
    pgtopo_engine_recipe: EngineRecipe,
) -> AsyncIterator[AsyncEngine]:
    """An AsyncEngine on this test's database through pg_ha's HAProxy primary listener."""
    async for engine in pgtopo_engine_recipe.async_engine(_database(request, "pg_ha_database")):
        yield engine


@pytest.fixture
@matrix.engine_fixture("sync", multi_host=True)
def ha_failover_sync_engine(
    request: pytest.FixtureRequest,
    _pgtopo_ha_engines: HaTopology,
    pgtopo_engine_recipe: EngineRecipe,
) -> Iterator[sqlalchemy.Engine]:
    """A sync Engine on pg_ha's two nodes through the multi-host URL (target_session_attrs=
    read-write), bypassing HAProxy: to compare the two paths. Not pg8000."""
    dbname = _database(request, "pg_ha_database").dbname
    yield from pgtopo_engine_recipe.sync_engine(_pgtopo_ha_engines.multi_host().with_dbname(dbname))


@pytest_asyncio.fixture
@matrix.engine_fixture("async", multi_host=True)
async def ha_failover_engine(
    request: pytest.FixtureRequest,
    _pgtopo_ha_engines: HaTopology,
    pgtopo_engine_recipe: EngineRecipe,
) -> AsyncIterator[AsyncEngine]:
    """An AsyncEngine on pg_ha's two nodes through the multi-host URL, bypassing HAProxy."""
    dbname = _database(request, "pg_ha_database").dbname
    both = _pgtopo_ha_engines.multi_host().with_dbname(dbname)
    async for engine in pgtopo_engine_recipe.async_engine(both):
        yield engine


# --- helpers ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _skip_if_unavailable() -> Iterator[None]:
    try:
        yield
    except TopologyUnavailableError as exc:
        pytest.skip(f"pytest-pgtopo: {exc}")


def _topology(session: PgtopoSession, name: str, major: int | None) -> Topology:
    """Topology `name` on PostgreSQL `major`, started on first use; a test skips, saying why,
    if the backend cannot provide it."""
    with _skip_if_unavailable():
        return session.topology(name, major)
    raise AssertionError("unreachable: pytest.skip raises")


def _parametrized_directly(metafunc: pytest.Metafunc, argname: str) -> bool:
    for marker in metafunc.definition.iter_markers("parametrize"):
        argnames = marker.args[0] if marker.args else marker.kwargs.get("argnames", "")
        names = argnames.split(",") if isinstance(argnames, str) else list(argnames)
        if argname in (name.strip() for name in names):
            return True
    return False


def _test_database(
    request: pytest.FixtureRequest,
    session: PgtopoSession,
    topology: Topology,
    schema: SchemaSource,
    *,
    durable: SessionSettings | None = None,
    after_create: Callable[[], None] | None = None,
) -> Iterator[Endpoint]:
    with contextlib.ExitStack() as stack:
        try:
            database = stack.enter_context(
                session.databases(topology).for_test(
                    request.node.name,
                    schema,
                    mode=session.config.isolation,
                    settings=durable,
                    after_create=after_create,
                )
            )
        except SchemaLoadError as exc:
            if exc.traceback_helps:  # A callable's or MetaData's error: the user's frames matter.
                raise
            said = str(exc)  # A .sql file's error names the file and line: that is all of it.
        else:
            said = ""
        if said:  # Outside the except: no chained driver traceback to bury the message.
            pytest.fail(f"pytest-pgtopo: {said}", pytrace=False)
        endpoint = topology.client_endpoint.with_dbname(database.name)
        yield endpoint
        if session.config.keep and session.config.isolation == "database":
            database.keep = _failed(request.node)
            if database.keep:
                session.kept_databases.append(KeptDatabase(request.node.nodeid, endpoint))


def _failed(item: pytest.Item) -> bool:
    reports = item.stash.get(REPORTS_KEY, {})
    return any(report.failed for report in reports.values())


@dataclass(frozen=True)
class EngineRecipe:
    """Builds a test's engines, and in rollback mode wraps them in the outer transaction."""

    driver: str
    settings: SessionSettings
    engine_kwargs: dict[str, Any]
    rollback: bool

    def _arguments(self, pooler: Pooler | None, read_only: bool) -> dict[str, Any]:
        kwargs = {**self.engine_kwargs, **(rollback_engine_kwargs() if self.rollback else {})}
        settings = self.settings.replace(read_only=True) if read_only else self.settings
        return {"settings": settings, "pooler": pooler, **kwargs}

    def sync_engine(
        self,
        endpoint: Endpoint | MultiHostEndpoint,
        pooler: Pooler | None = None,
        *,
        read_only: bool = False,
    ) -> Iterator[sqlalchemy.Engine]:
        arguments = self._arguments(pooler, read_only)
        engine = _explained(lambda: create_engine(endpoint, self.driver, **arguments))
        try:
            if self.rollback:
                with engine.connect() as connection:
                    begin_outer_transaction(connection)
            yield engine
            if self.rollback:
                with engine.connect() as connection:
                    rollback_outer_transaction(connection)
        finally:
            engine.dispose()

    async def async_engine(
        self,
        endpoint: Endpoint | MultiHostEndpoint,
        pooler: Pooler | None = None,
        *,
        read_only: bool = False,
    ) -> AsyncIterator[AsyncEngine]:
        arguments = self._arguments(pooler, read_only)
        engine = _explained(lambda: create_async_engine(endpoint, self.driver, **arguments))
        try:
            if self.rollback:
                async with engine.connect() as connection:
                    await connection.run_sync(begin_outer_transaction)
            yield engine
            if self.rollback:
                async with engine.connect() as connection:
                    await connection.run_sync(rollback_outer_transaction)
        finally:
            await engine.dispose()


def _explained(build: Callable[[], T]) -> T:
    try:
        return build()
    except PgtopoError as exc:
        message = f"pytest-pgtopo: {exc}"
    # A recipe that refuses (a pooler from another address, say): fail the setup, say why, once.
    # Outside the except block, so pytest does not print the error again as the failure's cause.
    pytest.fail(message, pytrace=False)
