"""Per-test databases: one template per schema, a clone per test, dropped in the background.

The schema is loaded once into a template database; each test gets `CREATE DATABASE ...
TEMPLATE` (~15 ms on tmpfs) and the database is dropped afterwards by a background thread, so
a test never waits for the server to notice a closed connection. In rollback mode (see
rollback.py) every test with one schema shares one database instead.
`Databases.for_test` is the whole life of one test's database, as one context manager.

Every database a run creates carries the run's token in its name, and the run holds an advisory
lock keyed by that token on its admin connection for as long as it lives. A run killed with
`kill -9` loses the lock with its connection, so the next run on the same server can tell its
databases from those of a run still going, and drops them (`sweep_orphans`).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import queue
import re
import secrets
import threading
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy
from sqlalchemy.pool import NullPool

from . import drivers
from .admin import AdminConnection, admin_driver, server_error
from .audit import INTERNAL_APPLICATION_NAME
from .errors import PgtopoError, PgtopoWarning
from .quoting import quote_ident, quote_literal
from .recipes.pooler import durable_settings_sql
from .recipes.settings import SessionSettings
from .schema_cache import KeyedSchema, Outcome, SchemaCache
from .types import DatabaseServer, IsolationMode, SchemaSource

TEMPLATE_DB = "pgtopo_template"
SHARED_DB = "pgtopo_shared"
# Every name a run creates carries a token of its own, so runs sharing one server (an external
# backend, parallel CI jobs) never collide: pgtopo_<token>_<n>_<test>, pgtopo_template_<token>_<n>,
# pgtopo_shared_<token>_<n>. The token is 8 hex digits, the lock key below in hex.
_MAX_IDENT = 63
_RUN_NAME = re.compile(r"^pgtopo_(?:template_|shared_)?(?P<token>[0-9a-f]{8})_[0-9]+(?:_|$)")
RUN_LOCK_CLASS = 0x70677470  # "pgtp": the first key of every run's pg_advisory_lock(int, int).
"""A run holds pg_advisory_lock(RUN_LOCK_CLASS, <its token as an int>) while it lives."""
KEPT_COMMENT = "kept by pytest-pgtopo --pgtopo-keep"
"""COMMENT ON DATABASE of a failed test's database left for a person: never swept."""


class SchemaLoadError(PgtopoError):
    """`pgtopo_schema` could not be loaded into its template. Raised again, as a new exception
    with the same message chained to the first, for every later test that needs that schema."""

    def __init__(self, message: str, *, traceback_helps: bool) -> None:
        super().__init__(message)
        self.traceback_helps = traceback_helps
        """False when the message says it all (a .sql file's path, line and error); True when the
        user's own frames are the point (a callable or MetaData that raised)."""

    def again(self) -> SchemaLoadError:
        again = SchemaLoadError(str(self), traceback_helps=self.traceback_helps)
        again.__cause__ = self
        return again


@dataclass
class TestDatabase:
    """One test's database, as `Databases.for_test` hands it out."""

    __test__ = False  # Not a test class, whatever pytest thinks of the name.

    name: str
    keep: bool = False
    """Set before the block ends to leave the database in place (a failed test's, with
    --pgtopo-keep); otherwise it is dropped."""


class Databases:
    """Per-test databases on one server, cloned from one template per schema.

    Different directories of a suite may override `pgtopo_schema` differently, so each
    distinct schema object gets its own template (and its own shared database in rollback mode).
    """

    def __init__(
        self,
        server: DatabaseServer,
        *,
        before_drop: Callable[[str], None] | None = None,
        schema_cache: SchemaCache | None = None,
        clone_ahead: bool = False,
    ) -> None:
        """`before_drop(name)` lets go of what holds a database before it is dropped;
        `schema_cache` restores a schema loaded before instead of loading it again;
        `clone_ahead` clones the template for the next test while a test runs (worth it only
        with a core to spare: it moves ~15 ms off each test's path but costs CPU)."""
        self.server = server
        self.schema_cache = schema_cache
        self.clone_ahead = clone_ahead
        self.fills: list[Outcome] = []
        """How each template of this server got its schema, in order (for tests and reports)."""
        self._before_drop = before_drop
        self._templates: dict[int, tuple[SchemaSource, str]] = {}
        self._failed: dict[int, tuple[SchemaSource, SchemaLoadError]] = {}
        self._shared: dict[str, str] = {}
        self._lock = threading.Lock()
        self._counter = itertools.count(1)
        self._template_counter = itertools.count()
        self._worker: _Background | None = None
        self._prefetched: dict[str, Future[str]] = {}
        """Per template, the clone the background thread is making for the next test."""
        self._token: str | None = None
        self._at_close: list[str] = []

    @property
    def admin(self) -> AdminConnection:
        return self.server.admin

    @property
    def token(self) -> str:
        """This run's token in the names of the databases it creates on this server.

        On first use, the databases of runs that are gone are swept, then a token is claimed
        by taking its advisory lock on the server's admin connection, held until it closes.
        """
        with self._lock:
            if self._token is None:
                sweep_orphans(self.admin)
                while True:
                    key = secrets.randbelow(2**31 - 1) + 1  # A positive int4: pg_locks.objid.
                    claimed = self.admin.scalar(
                        f"SELECT pg_try_advisory_lock({RUN_LOCK_CLASS}, {key})"
                    )
                    if claimed:  # Else a live run holds that key: draw another.
                        self._token = f"{key:08x}"
                        break
            return self._token

    @contextlib.contextmanager
    def for_test(
        self,
        label: str,
        schema: SchemaSource,
        *,
        mode: IsolationMode = "database",
        settings: SessionSettings | None = None,
        after_create: Callable[[], None] | None = None,
    ) -> Iterator[TestDatabase]:
        """The database one test uses, from creation to drop.

        In `database` mode a fresh clone of the schema's template, named after `label`; in
        `rollback` mode the schema's shared database, which outlives the test. `settings` are
        made durable on it with ALTER DATABASE ... SET (behind a transaction pooler, startup
        parameters cannot carry them); `after_create` runs once it exists (a replica waits for
        it to be replayed, say). Dropped afterwards unless the caller set `.keep`.
        """
        shared = mode == "rollback"
        database = TestDatabase(self.shared(schema) if shared else self.create(label, schema))
        for statement in durable_settings_sql(settings, database=database.name) if settings else []:
            self.admin.execute(statement)
        if after_create is not None:
            after_create()
        yield database
        if database.keep and not shared:
            # Left for a person to look at: a later run's sweep must leave it too. Best effort:
            # the test's own failure is what the report is about.
            with contextlib.suppress(Exception):
                self.admin.execute(
                    f"COMMENT ON DATABASE {quote_ident(database.name)} "
                    f"IS {quote_literal(KEPT_COMMENT)}"
                )
        elif not shared:
            self.drop_later(database.name)

    def create(self, label: str, schema: SchemaSource = None) -> str:
        """A fresh database for one test; `label` (the test name) makes it recognisable.

        With `clone_ahead`, while a test runs the background thread clones the template for
        the next one, and the next test only renames it (~1 ms instead of a ~15 ms CREATE
        DATABASE on its critical path)."""
        template = self.template(schema)
        name = _database_name(f"{self.token}_{next(self._counter)}", label)
        ready = self._take_prefetched(template)
        if ready is not None:
            self.admin.execute(f"ALTER DATABASE {quote_ident(ready)} RENAME TO {quote_ident(name)}")
        else:
            self.admin.execute(f"CREATE DATABASE {quote_ident(name)} TEMPLATE {template}")
        if self.clone_ahead:
            self._prefetch(template)
        return name

    def _prefetch(self, template: str) -> None:
        """Clone `template` in the background for the next test that needs it."""
        name = f"pgtopo_{self.token}_{next(self._counter)}_next"
        self._prefetched[template] = self._background().run(
            f"CREATE DATABASE {quote_ident(name)} TEMPLATE {template}", result=name
        )

    def _take_prefetched(self, template: str) -> str | None:
        """The clone made ahead for `template`, once it exists; None if there is none or
        making it failed (the caller's own CREATE then says why, in the test)."""
        ahead = self._prefetched.pop(template, None)
        if ahead is None:
            return None
        try:
            return ahead.result(timeout=_BACKGROUND_TIMEOUT)
        except Exception:  # noqa: BLE001 - the synchronous CREATE reports the real problem.
            return None

    def drop_later(self, name: str, *, at_close: bool = False) -> None:
        """Drop in the background; close() waits for every pending drop. `at_close` waits
        for close() itself (templates and shared databases live for the session)."""
        if at_close:
            self._at_close.append(name)
            return
        self._background().drop(name)

    def _background(self) -> _Background:
        if self._worker is None:
            self._worker = _Background(self.server, self._before_drop)
        return self._worker

    def shared(self, schema: SchemaSource = None) -> str:
        """The one database every test with this schema shares in rollback mode."""
        template = self.template(schema)
        with self._lock:
            if template not in self._shared:
                name = template.replace(TEMPLATE_DB, SHARED_DB)
                self.admin.execute(f"CREATE DATABASE {name} TEMPLATE {template}")
                self.drop_later(name, at_close=True)
                self._shared[template] = name
        return self._shared[template]

    def template(self, schema: SchemaSource) -> str:
        """The template database holding `schema`, created and loaded on first use.

        A schema that fails to load raises SchemaLoadError, and its half-built template is
        dropped at once; every later call for that schema raises the same error again without
        loading it again.
        """
        token = self.token
        with self._lock:
            # Keyed by identity: schema fixtures are session-scoped, so each is one object.
            known = self._templates.get(id(schema))
            if known is not None:
                return known[1]
            failed = self._failed.get(id(schema))
            if failed is not None:
                raise failed[1].again()
            check_schema(schema)
            name = f"{TEMPLATE_DB}_{token}_{next(self._template_counter)}"
            self.admin.execute(f"CREATE DATABASE {name}")
            try:
                self.fills.append(self._fill(schema, name))
            except BaseException as exc:
                if isinstance(exc, SchemaLoadError):  # The next test gets it again, at once.
                    self._failed[id(schema)] = (schema, exc)  # Holding `schema` keeps its id.
                # FORCE: a connection the user's callable leaked must not keep it.
                with contextlib.suppress(Exception):
                    self.admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
                raise
            # No connections allowed: a stray one would make every clone fail with
            # 'source database "pgtopo_template" is being accessed by other users'.
            self.admin.execute(
                f"ALTER DATABASE {name} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false"
            )
            self._templates[id(schema)] = (schema, name)  # Holding `schema` keeps its id unique.
            self.drop_later(name, at_close=True)
            return name

    def _fill(self, schema: SchemaSource, name: str) -> Outcome:
        def load() -> None:
            load_schema(schema, self.server, name)

        if self.schema_cache is None:
            load()
            return "uncached"
        return self.schema_cache.fill(schema, self.server, name, load)

    def wait_for_drops(self) -> None:
        """Block until every database handed to drop_later() is gone."""
        if self._worker is not None:
            self._worker.close()
            self._worker = None

    def close(self) -> None:
        """Drop what is pending, then the session's templates and shared databases; then let
        go of the run's lock (only once all is dropped: what is left stays sweepable)."""
        for template in list(self._prefetched):  # Made for tests that never came.
            ready = self._take_prefetched(template)
            if ready is not None:
                self.drop_later(ready)
        for name in self._at_close:
            self.drop_later(name)
        self._at_close.clear()
        self.wait_for_drops()
        with self._lock:
            if self._token is not None:
                key = int(self._token, 16)
                # A connection that is gone took the lock with it: nothing to report.
                with contextlib.suppress(Exception):
                    self.admin.scalar(f"SELECT pg_advisory_unlock({RUN_LOCK_CLASS}, {key})")
                self._token = None


def check_schema(schema: SchemaSource) -> None:
    """Raise PgtopoError, before any database is made, for what `pgtopo_schema` cannot mean."""
    if schema is None or isinstance(schema, sqlalchemy.MetaData) or callable(schema):
        return
    if isinstance(schema, (str, os.PathLike)):
        path = Path(schema)
        if not path.is_file():
            raise PgtopoError(
                f"pgtopo_schema names the SQL file {str(path)!r}, which does not exist; "
                "return a MetaData, a path to an existing .sql file, or a callable taking an Engine"
            )
        return
    raise PgtopoError(
        f"pgtopo_schema returned {schema!r}; expected a sqlalchemy.MetaData, "
        "a path to a .sql file, a callable taking a sync Engine, or None"
    )


def load_schema(schema: SchemaSource, server: DatabaseServer, dbname: str) -> None:
    """Load `schema` into `dbname`: a MetaData, a path to a .sql file, or a callable(Engine).

    Raises SchemaLoadError: for a .sql file, naming the file and the line the server pointed
    at; for a MetaData or callable, chained to what it raised (whose traceback is the user's).
    """
    check_schema(schema)
    if schema is None:
        return
    endpoint = server.endpoint.with_dbname(dbname)
    if isinstance(schema, (str, os.PathLike)):
        path = Path(schema)
        script = path.read_text()
        admin = AdminConnection(endpoint)
        try:
            admin.run_script(script)
        except Exception as exc:
            raise SchemaLoadError(_script_error(path, script, exc), traceback_helps=False) from exc
        finally:
            admin.close()
        return
    assert isinstance(schema, sqlalchemy.MetaData) or callable(schema)  # check_schema said so.
    driver = admin_driver()
    # Named so --pgtopo-audit knows the plugin's own engine from the application's.
    internal = drivers.get(driver).startup_args({"application_name": INTERNAL_APPLICATION_NAME})
    engine = sqlalchemy.create_engine(
        endpoint.url(driver),
        poolclass=NullPool,
        connect_args={**endpoint.connect_args(driver), **internal},
    )
    try:
        if isinstance(schema, sqlalchemy.MetaData):
            schema.create_all(engine)
        else:
            schema(engine)
    except Exception as exc:
        if isinstance(schema, sqlalchemy.MetaData):
            what = "MetaData.create_all()"
        else:
            loader = schema.load if isinstance(schema, KeyedSchema) else schema
            what = f"{getattr(loader, '__qualname__', repr(loader))}()"
        raise SchemaLoadError(
            f"loading pgtopo_schema with {what} failed: {type(exc).__name__}: {exc}",
            traceback_helps=True,
        ) from exc
    finally:
        engine.dispose()


def _script_error(path: Path, script: str, exc: Exception) -> str:
    """`path:line: message`, then the line with a caret under the position, then the server's
    DETAIL and HINT. The script was sent whole, so the server's position (in characters of
    what was sent) is a position in the file."""
    error = server_error(exc)
    if error is None:  # Not the server's word (the connection broke, say): as the driver said.
        return f"{path}: {type(exc).__name__}: {exc}"
    lines = [f"{path}: {error.message}"]
    if error.position is not None:
        before = script[: error.position - 1]
        number = before.count("\n") + 1
        column = len(before) - (before.rfind("\n") + 1)
        text = script.split("\n")[number - 1]
        lines = [f"{path}:{number}: {error.message}", f"    {text}", "    " + " " * column + "^"]
    lines += [
        f"{label}: {value}"
        for label, value in (("DETAIL", error.detail), ("HINT", error.hint))
        if value
    ]
    return "\n".join(lines)


def run_of(name: str) -> str | None:
    """The token of the run that created database `name`; None if no run of ours did."""
    match = _RUN_NAME.match(name)
    return match["token"] if match else None


def live_runs(admin: AdminConnection) -> set[str]:
    """Tokens of the runs alive on `admin`'s server: those whose advisory lock is held."""
    rows = admin.rows(
        "SELECT objid::bigint AS key FROM pg_locks WHERE locktype = 'advisory' AND granted "
        f"AND classid = {RUN_LOCK_CLASS} AND objsubid = 2"
    )
    return {f"{int(row['key']):08x}" for row in rows}


def sweep_orphans(admin: AdminConnection) -> list[str]:
    """Drop the databases of runs that are gone (killed with `kill -9`, say) from `admin`'s
    server and return their names. A live run's databases, and those --pgtopo-keep kept for a
    person, stay. One that cannot be dropped (another role owns it) is a warning, not an error.
    """
    # Databases first, locks second: a database listed here was made after its run took its
    # lock, so a run still alive is seen holding it.
    rows = admin.rows(
        "SELECT datname, datistemplate, shobj_description(oid, 'pg_database') AS comment "
        "FROM pg_database WHERE datname ~ '^pgtopo_'"
    )
    candidates = [row for row in rows if run_of(str(row["datname"])) is not None]
    if not candidates:
        return []
    alive = live_runs(admin)
    dropped = []
    for row in candidates:
        name = str(row["datname"])
        if run_of(name) in alive or row["comment"] == KEPT_COMMENT:
            continue
        try:
            if row["datistemplate"]:  # A template cannot be dropped as such.
                admin.execute(f"ALTER DATABASE {quote_ident(name)} WITH IS_TEMPLATE false")
            admin.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")
        except Exception as exc:  # noqa: BLE001 - someone else's leftovers never fail a run.
            warnings.warn(
                PgtopoWarning(f"could not drop {name}, left by a run that is gone: {exc}"),
                stacklevel=2,
            )
            continue
        dropped.append(name)
    return dropped


def _database_name(number: str, label: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")
    return f"pgtopo_{number}_{slug}"[:_MAX_IDENT]


_BACKGROUND_TIMEOUT = 120.0  # Seconds to wait for the background thread (a clone, the drops).
_Job = Callable[[Callable[[], AdminConnection]], None]
"""A background job: given the thread's admin connection (made on first use), does one thing."""


class _Background:
    """A thread with its own connection that drops databases as tests finish with them and
    clones templates ahead of the tests that will need them, in the order asked."""

    def __init__(self, server: DatabaseServer, before_drop: Callable[[str], None] | None) -> None:
        self._server = server
        self._before_drop = before_drop
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._errors: list[str] = []
        self._thread = threading.Thread(target=self._run, name="pgtopo-databases", daemon=True)
        self._thread.start()

    def drop(self, name: str) -> None:
        """Drop `name`; a failure is reported by close(), in the main thread."""

        def job(connection: Callable[[], AdminConnection]) -> None:
            try:
                admin = connection()
                if self._before_drop is not None:
                    # Best effort (the pooler may be restarting): FORCE below is the guarantee.
                    with contextlib.suppress(Exception):
                        self._before_drop(name)
                if name.startswith(TEMPLATE_DB):  # A template cannot be dropped as such.
                    admin.execute(f"ALTER DATABASE {quote_ident(name)} WITH IS_TEMPLATE false")
                # FORCE ends any connection a test leaked instead of failing the drop.
                admin.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")
            except Exception as exc:  # noqa: BLE001 - reported from close().
                if self._server.is_running():  # A stopped server takes its databases with it.
                    self._errors.append(f"{name}: {exc}")

        self._queue.put(job)

    def run(self, sql: str, *, result: str) -> Future[str]:
        """Execute `sql`; the future holds `result` once it worked, else the error."""
        done: Future[str] = Future()

        def job(connection: Callable[[], AdminConnection]) -> None:
            try:
                connection().execute(sql)
            except BaseException as exc:  # noqa: BLE001 - handed to whoever waits on it.
                done.set_exception(exc)
            else:
                done.set_result(result)

        self._queue.put(job)
        return done

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=_BACKGROUND_TIMEOUT)
        if self._errors:
            raise PgtopoError("could not drop test databases:\n" + "\n".join(self._errors))

    def _run(self) -> None:
        admin: AdminConnection | None = None

        def connection() -> AdminConnection:  # Made on first use, by the first job.
            nonlocal admin
            if admin is None:
                admin = AdminConnection(self._server.endpoint)
            return admin

        while (job := self._queue.get()) is not None:
            job(connection)
        if admin is not None:
            admin.close()
