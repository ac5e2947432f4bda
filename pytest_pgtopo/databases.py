"""Per-test databases: one template per schema, a clone per test, dropped in the background.

The schema is loaded once into a template database; each test gets `CREATE DATABASE ...
TEMPLATE` (~15 ms on tmpfs) and the database is dropped afterwards by a background thread, so
a test never waits for the server to notice a closed connection. In rollback mode (see
rollback.py) every test with one schema shares one database instead.
`Databases.for_test` is the whole life of one test's database, as one context manager.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import queue
import re
import secrets
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy
from sqlalchemy.pool import NullPool

from . import drivers
from .admin import AdminConnection, admin_driver
from .audit import INTERNAL_APPLICATION_NAME
from .errors import PgtopoError
from .quoting import quote_ident
from .recipes.pooler import durable_settings_sql
from .recipes.settings import SessionSettings
from .types import DatabaseServer, IsolationMode, SchemaSource

TEMPLATE_DB = "pgtopo_template"
SHARED_DB = "pgtopo_shared"
# Every name a run creates carries a token of its own, so runs sharing one server (an external
# backend, parallel CI jobs) never collide.
_MAX_IDENT = 63


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
        self, server: DatabaseServer, *, before_drop: Callable[[str], None] | None = None
    ) -> None:
        """`before_drop(name)` lets go of what holds a database before it is dropped."""
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
        if not (shared or database.keep):
            self.drop_later(database.name)

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
