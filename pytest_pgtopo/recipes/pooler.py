"""What changes when a transaction pooler (PgBouncer, pool_mode=transaction) sits in between.

Consecutive transactions of one client may run on different server connections, so:
- server-side prepared statements vanish or collide: every driver's statement cache goes off;
- PgBouncer accepts in a startup packet only the parameters it tracks per client and replays
  on whichever server connection the client gets: client_encoding, DateStyle, TimeZone,
  standard_conforming_strings and application_name. Any other one is refused ("unsupported
  startup parameter: statement_timeout"), or, if listed in ignore_startup_parameters, dropped
  silently. So only tracked parameters are sent at startup; the rest become durable server-side
  settings (ALTER DATABASE / ALTER ROLE ... SET), which every pooled server connection picks up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..admin import AdminConnection
from ..drivers import Driver
from ..endpoint import Endpoint, MultiHostEndpoint
from ..errors import PgtopoError
from ..pgbouncer_facts import (
    TRACKED_STARTUP_PARAMETERS,
    PoolMode,
    Version,
    default_max_prepared_statements,
    parse_version,
)
from ..quoting import quote_ident, quote_literal
from .settings import SessionSettings


@dataclass(frozen=True)
class PgBouncerPooler:
    """What one PgBouncer really does for the clients behind it: pass it as `pooler=`.

    Every PgBouncer topology has one as `.pooler`, read from the running PgBouncer. For your
    production PgBouncer, build it by hand from its admin console (`SHOW VERSION`, and the
    `max_prepared_statements` row of `SHOW CONFIG`; absent before 1.21, which means 0)::

        PgBouncerPooler(version=(1, 24, 1), max_prepared_statements=200)

    or read it with `PgBouncerPooler.read(admin_endpoint)` as a user listed in admin_users or
    stats_users.
    """

    version: Version
    max_prepared_statements: int | None = None
    """None: the version's default (200 since 1.24, 0 before; 1.21-1.23 track only when set)."""
    pool_mode: PoolMode = "transaction"
    address: tuple[str, int] | None = None
    """Where it listens, when known: an engine pointed elsewhere with this pooler is refused."""

    @property
    def effective_max_prepared_statements(self) -> int:
        if self.max_prepared_statements is not None:
            return self.max_prepared_statements
        return default_max_prepared_statements(self.version)

    @property
    def tracks_prepared_statements(self) -> bool:
        """Since 1.21, in transaction and statement mode, PgBouncer keeps protocol-level
        prepared statements per client and prepares them on whichever server connection the
        client gets, when max_prepared_statements > 0."""
        return self.version >= (1, 21, 0) and self.effective_max_prepared_statements > 0

    @classmethod
    def read(cls, admin: Endpoint) -> PgBouncerPooler:
        """Ask a running PgBouncer: `admin` is any endpoint of it whose user may use the
        console (admin_users or stats_users); its dbname is replaced by `pgbouncer`."""
        console = AdminConnection(admin.with_dbname("pgbouncer"))
        try:
            version = parse_version(" ".join(map(str, console.rows("SHOW VERSION")[0].values())))
            config = {str(row["key"]): str(row["value"]) for row in console.rows("SHOW CONFIG")}
        finally:
            console.close()
        prepared = config.get("max_prepared_statements")
        return cls(
            version=version,
            max_prepared_statements=int(prepared) if prepared is not None else 0,
            pool_mode=config.get("pool_mode", "transaction"),  # type: ignore[arg-type]
            address=(admin.host, admin.port),
        )

    def describe(self) -> str:
        tracked = self.effective_max_prepared_statements if self.tracks_prepared_statements else 0
        return (
            f"PgBouncer {'.'.join(map(str, self.version))}, {self.pool_mode} pooling, "
            f"max_prepared_statements={tracked}"
        )


Pooler = Literal["transaction"] | PgBouncerPooler
"""`"transaction"`: some PgBouncer in transaction mode, assumed to track nothing (the
conservative choice: prepared-statement caches off). A `PgBouncerPooler`: that very PgBouncer,
so the recipe keeps what it keeps safe."""

# GUCs whose value is a list: ALTER ... SET takes the items, not one quoted string.
_LIST_SETTINGS = frozenset({"search_path"})


def as_pgbouncer(pooler: Pooler) -> PgBouncerPooler:
    """`"transaction"` as the PgBouncer it stands for: transaction mode, nothing tracked."""
    if isinstance(pooler, PgBouncerPooler):
        return pooler
    if pooler == "transaction":
        return PgBouncerPooler(version=(0, 0, 0), max_prepared_statements=0)
    raise PgtopoError(
        f"pooler={pooler!r} is not a pooler: pass 'transaction', a topology's .pooler, or "
        "PgBouncerPooler(version=(1, 24, 1), max_prepared_statements=200) for your own PgBouncer"
    )


def keeps_prepared_statements(pooler: PgBouncerPooler, driver: Driver) -> bool:
    """Whether `driver`'s server-side prepared statements stay correct behind `pooler`: always
    in session mode; in transaction mode only where PgBouncer tracks them and the driver's
    statements were proven safe under concurrent committed load on that version
    (Driver.prepared_statements_through_pgbouncer)."""
    if pooler.pool_mode == "session":
        return True
    safe = driver.prepared_statements_through_pgbouncer
    return pooler.tracks_prepared_statements and safe is not None and safe(pooler.version)


def check_address(pooler: PgBouncerPooler, endpoint: Endpoint | MultiHostEndpoint) -> None:
    """Refuse a topology's .pooler on an engine that connects somewhere else."""
    if pooler.address is None or not isinstance(endpoint, Endpoint):
        return
    if (endpoint.host, endpoint.port) != pooler.address:
        host, port = pooler.address
        raise PgtopoError(
            f"pooler= describes the PgBouncer at {host}:{port}, but this engine connects to "
            f"{endpoint.host}:{endpoint.port}; pass the .pooler of the topology you connect to, "
            "pooler='transaction' for an unknown PgBouncer, or no pooler for a direct connection"
        )


def startup_settings(settings: SessionSettings, driver: Driver) -> dict[str, str]:
    """The settings `driver` can send at startup through a transaction pooler: those the pooler
    tracks, and only as the driver's own parameters (libpq would wrap TimeZone in `options`)."""
    own = driver.own_startup_parameters
    return {
        name: value
        for name, value in settings.server_settings().items()
        if name in TRACKED_STARTUP_PARAMETERS and (own is None or name in own)
    }


def durable_settings(settings: SessionSettings) -> dict[str, str]:
    """The settings to keep on the server (ALTER DATABASE/ROLE ... SET) behind a pooler: all
    but application_name, which names the client. TimeZone is included for drivers that cannot
    send it at startup through the pooler; a startup value still wins where one is sent."""
    return {
        name: value
        for name, value in settings.server_settings().items()
        if name != "application_name"
    }


def durable_settings_sql(
    settings: SessionSettings, *, database: str | None = None, role: str | None = None
) -> list[str]:
    """ALTER statements that make `settings` durable for a database, a role, or a role in a
    database; run them once (in a migration, say), not per connection. Every setting but
    application_name is kept, defaults included (TimeZone, idle_in_transaction_session_timeout):

    >>> settings = SessionSettings(
    ...     application_name="orders-api", search_path="tenant_a, public", statement_timeout="5s"
    ... )
    >>> for sql in durable_settings_sql(settings, database="orders", role="orders_app"):
    ...     print(sql)
    ALTER ROLE "orders_app" IN DATABASE "orders" SET TimeZone = 'UTC'
    ALTER ROLE "orders_app" IN DATABASE "orders" SET search_path = "tenant_a", "public"
    ALTER ROLE "orders_app" IN DATABASE "orders" SET statement_timeout = '5s'
    ALTER ROLE "orders_app" IN DATABASE "orders" SET idle_in_transaction_session_timeout = '60000'
    """
    if database is None and role is None:
        raise ValueError("name a database, a role, or both")
    target = (
        f"ROLE {quote_ident(role)}" + (f" IN DATABASE {quote_ident(database)}" if database else "")
        if role is not None
        else f"DATABASE {quote_ident(str(database))}"
    )
    return [
        f"ALTER {target} SET {name} = {_value_sql(name, value)}"
        for name, value in durable_settings(settings).items()
    ]


def _value_sql(name: str, value: str) -> str:
    if name in _LIST_SETTINGS:
        items = [item.strip() for item in value.split(",") if item.strip()]
        return ", ".join(item if item.startswith('"') else quote_ident(item) for item in items)
    return quote_literal(value)
