"""Keep tests apart: a database per test cloned from a template, or one rolled-back transaction.

`database` mode (the default): the schema is loaded once into a template database; each test
gets `CREATE DATABASE ... TEMPLATE` (~15 ms on tmpfs) and the database is dropped afterwards
by a background thread, so a test never waits for the server to notice a closed connection.

`rollback` mode: every test shares one database; each engine holds one connection inside an
outer transaction that is rolled back after the test, and the application's own BEGIN/COMMIT/
ROLLBACK become SAVEPOINT/RELEASE/ROLLBACK TO. Cheaper, but a test cannot use AUTOCOMMIT or
see its own work from a second connection.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import queue
import re
import secrets
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Protocol

import sqlalchemy
from sqlalchemy.pool import NullPool

from . import dbapi, drivers
from .admin import AdminConnection, admin_driver, quote_ident
from .audit import INTERNAL_APPLICATION_NAME
from .endpoint import Endpoint
from .errors import PgtopoError

IsolationMode = Literal["database", "rollback"]
SchemaSource = (
    sqlalchemy.MetaData | str | os.PathLike[str] | Callable[[sqlalchemy.Engine], Any] | None
)

TEMPLATE_DB = "pgtopo_template"
SHARED_DB = "pgtopo_shared"
# Every name a run creates carries a token of its own, so runs sharing one server (an external
# backend, parallel CI jobs) never collide.
_MAX_IDENT = 63
_UNIT_SAVEPOINT = "pgtopo_unit"


class DatabaseServer(Protocol):
    """What per-test databases need of a server: a local DatabaseServer or an external one."""

    @property
    def endpoint(self) -> Endpoint: ...

    @property
    def admin(self) -> AdminConnection: ...

    def is_running(self) -> bool: ...


class Databases:
    """Per-test databases on one server, cloned from one template per schema.

    Different directories of a suite may override `pgtopo_schema` differently, so each
    distinct schema object gets its own template (and its own shared database in rollback mode).
    """

    def __init__(
        self, server: DatabaseServer, *, before_drop: Callable[[str], None] | None = None
    ) -> None:
        self.server = server
        self._before_drop = before_drop
        self._templates: dict[int, tuple[SchemaSource, str]] = {}
        self._shared: dict[str, str] = {}
        self._lock = threading.Lock()
        self._counter = itertools.count(1)
        self._dropper: _Dropper | None = None
        self.token = secrets.token_hex(2)
        self._at_close: list[str] = []

    @property
    def admin(self) -> AdminConnection:
        return self.server.admin

    def create(self, label: str, schema: SchemaSource = None) -> str:
        """A fresh database for one test; `label` (the test name) makes it recognisable."""
        template = self.template(schema)
        name = _database_name(f"{self.token}_{next(self._counter)}", label)
        self.admin.execute(f"CREATE DATABASE {quote_ident(name)} TEMPLATE {template}")
        return name

    def drop_later(self, name: str, *, at_close: bool = False) -> None:
        """Drop in the background; close() waits for every pending drop. `at_close` waits
        for close() itself (templates and shared databases live for the session)."""
        if at_close:
            self._at_close.append(name)
            return
        if self._dropper is None:
            self._dropper = _Dropper(self.server, self._before_drop)
        self._dropper.submit(name)

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
        """The template database holding `schema`, created and loaded on first use."""
        with self._lock:
            # Keyed by identity: schema fixtures are session-scoped, so each is one object.
            known = self._templates.get(id(schema))
            if known is not None:
                return known[1]
            name = f"{TEMPLATE_DB}_{self.token}_{len(self._templates)}"
            self.admin.execute(f"CREATE DATABASE {name}")
            load_schema(schema, self.server, name)
            # No connections allowed: a stray one would make every clone fail with
            # 'source database "pgtopo_template" is being accessed by other users'.
            self.admin.execute(
                f"ALTER DATABASE {name} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false"
            )
            self._templates[id(schema)] = (schema, name)  # Holding `schema` keeps its id unique.
            self.drop_later(name, at_close=True)
            return name

    def wait_for_drops(self) -> None:
        """Block until every database handed to drop_later() is gone."""
        if self._dropper is not None:
            self._dropper.close()
            self._dropper = None

    def close(self) -> None:
        """Drop what is pending, then the session's templates and shared databases."""
        for name in self._at_close:
            self.drop_later(name)
        self._at_close.clear()
        self.wait_for_drops()


def load_schema(schema: SchemaSource, server: DatabaseServer, dbname: str) -> None:
    """Load `schema` into `dbname`: a MetaData, a path to a .sql file, or a callable(Engine)."""
    if schema is None:
        return
    endpoint = server.endpoint.with_dbname(dbname)
    if isinstance(schema, (str, os.PathLike)):
        path = Path(schema)
        if not path.is_file():
            raise PgtopoError(
                f"pgtopo_schema names the SQL file {str(path)!r}, which does not exist; "
                "return a MetaData, a path to an existing .sql file, or a callable taking an Engine"
            )
        admin = AdminConnection(endpoint)
        try:
            admin.run_script(path.read_text())
        finally:
            admin.close()
        return
    if not (isinstance(schema, sqlalchemy.MetaData) or callable(schema)):
        raise PgtopoError(
            f"pgtopo_schema returned {schema!r}; expected a sqlalchemy.MetaData, "
            "a path to a .sql file, a callable taking a sync Engine, or None"
        )
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
    finally:
        engine.dispose()


def _database_name(number: str, label: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")
    return f"pgtopo_{number}_{slug}"[:_MAX_IDENT]


class _Dropper:
    """A thread with its own connection that drops databases as tests finish with them."""

    def __init__(self, server: DatabaseServer, before_drop: Callable[[str], None] | None) -> None:
        self._server = server
        self._before_drop = before_drop
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._errors: list[str] = []
        self._thread = threading.Thread(target=self._run, name="pgtopo-dropper", daemon=True)
        self._thread.start()

    def submit(self, name: str) -> None:
        self._queue.put(name)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=120)
        if self._errors:
            raise PgtopoError("could not drop test databases:\n" + "\n".join(self._errors))

    def _run(self) -> None:
        admin = None
        while (name := self._queue.get()) is not None:
            try:
                admin = admin or AdminConnection(self._server.endpoint)
                if self._before_drop is not None:
                    # Best effort (the pooler may be restarting): FORCE below is the guarantee.
                    with contextlib.suppress(Exception):
                        self._before_drop(name)
                if name.startswith(TEMPLATE_DB):  # A template cannot be dropped as such.
                    admin.execute(f"ALTER DATABASE {quote_ident(name)} WITH IS_TEMPLATE false")
                # FORCE ends any connection a test leaked instead of failing the drop.
                admin.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")
            except Exception as exc:  # noqa: BLE001 - reported from close(), in the main thread.
                if self._server.is_running():  # A stopped server takes its databases with it.
                    self._errors.append(f"{name}: {exc}")
        if admin is not None:
            admin.close()


# --- rollback mode ---------------------------------------------------------------------------


def rollback_engine_kwargs() -> dict[str, Any]:
    """Pool settings for rollback mode: exactly one connection, never reset by the pool.

    No pre-ping either: psycopg's ping switches the connection to autocommit, which it refuses
    mid-transaction, and the one pinned connection cannot be replaced without losing the test's work.
    """
    return {"pool_size": 1, "max_overflow": 0, "pool_reset_on_return": None, "pool_pre_ping": False}


def begin_outer_transaction(connection: sqlalchemy.Connection) -> None:
    """Open the outer transaction on the pool's only connection, then turn the dialect's
    begin/commit/rollback into savepoint operations inside it.

    Call with a Connection from an engine made with rollback_engine_kwargs(); for an
    AsyncEngine, through AsyncConnection.run_sync(). The dialect's first connect (which calls
    the real rollback) has happened by now, so replacing its methods is safe.
    """
    dbapi_connection = connection.connection.dbapi_connection
    dbapi.execute(
        dbapi_connection, "SELECT 1"
    )  # Every driver starts its implicit transaction here.
    # Instance attributes shadow the dialect class's methods for this engine only.
    for method, replacement in (
        ("do_begin", _begin_unit),
        ("do_commit", _commit_unit),
        ("do_rollback", _rollback_unit),
    ):
        setattr(connection.dialect, method, replacement)


def rollback_outer_transaction(connection: sqlalchemy.Connection) -> None:
    """Undo everything the test did: the driver's real rollback of the outer transaction."""
    dbapi_connection = connection.connection.dbapi_connection
    assert dbapi_connection is not None
    dbapi_connection.rollback()


def _begin_unit(dbapi_connection: Any) -> None:
    dbapi.execute(dbapi_connection, f"SAVEPOINT {_UNIT_SAVEPOINT}")


def _commit_unit(dbapi_connection: Any) -> None:
    dbapi.execute(dbapi_connection, f"RELEASE SAVEPOINT {_UNIT_SAVEPOINT}")


def _rollback_unit(dbapi_connection: Any) -> None:
    dbapi.execute(dbapi_connection, f"ROLLBACK TO SAVEPOINT {_UNIT_SAVEPOINT}")
    dbapi.execute(dbapi_connection, f"RELEASE SAVEPOINT {_UNIT_SAVEPOINT}")
