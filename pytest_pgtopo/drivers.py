"""The one table that knows how each driver spells things.

Endpoints and recipes both read this table, so supporting a new driver, or a new quirk of an
existing one, is one edit here. Nothing in this module opens a connection on import.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from . import dbapi
from .errors import DriverNotInstalledError, DriverUnsupportedError
from .pgbouncer_facts import Version
from .tls import TlsClient

Kind = Literal["sync", "async"]


@dataclass(frozen=True)
class ClientOptions:
    """Client-side knobs every recipe sets; each driver spells them its own way."""

    connect_timeout: float = 10.0
    """Seconds to wait for a connection to be established."""
    command_timeout: float | None = None
    """Client-side limit per statement, in seconds (asyncpg only; others use statement_timeout)."""
    prepared_statements: bool = True
    """False turns off every server-side prepared statement cache (needed behind PgBouncer in
    transaction mode): asyncpg's and SQLAlchemy's statement caches, psycopg's prepare_threshold."""


def _asyncpg_client(options: ClientOptions) -> dict[str, Any]:
    args: dict[str, Any] = {"timeout": options.connect_timeout}
    if options.command_timeout is not None:
        args["command_timeout"] = options.command_timeout
    if not options.prepared_statements:
        # Both caches: asyncpg's own, and the one SQLAlchemy's adapter keeps on top of it.
        args["statement_cache_size"] = 0
        args["prepared_statement_cache_size"] = 0
    return args


def _psycopg_client(options: ClientOptions) -> dict[str, Any]:
    args: dict[str, Any] = {"connect_timeout": max(1, round(options.connect_timeout))}
    if not options.prepared_statements:
        args["prepare_threshold"] = None
    return args


def _psycopg2_client(options: ClientOptions) -> dict[str, Any]:
    # psycopg2 never prepares statements server-side; libpq wants whole seconds.
    return {"connect_timeout": max(1, round(options.connect_timeout))}


def _pg8000_client(options: ClientOptions) -> dict[str, Any]:
    # pg8000's `timeout` is a socket timeout for every operation, so connect_timeout is left to
    # the server's statement_timeout; pg8000 only uses unnamed statements outside its cache.
    return {}


Verification = Literal["none", "unverified", "verify-ca", "verify-full"]


@dataclass(frozen=True)
class ConnectFacts:
    """What a connection asked for, read back from the driver's own connect parameters."""

    startup: dict[str, str]
    """Startup parameters (GUC name -> value) the driver will send."""
    tls: Verification
    prepared_statements: bool
    """Whether server-side prepared statements outlive one transaction (caches on)."""


def _context_verification(context: Any) -> Verification:
    if not isinstance(context, ssl.SSLContext):
        return "unverified"
    if context.verify_mode == ssl.CERT_NONE:
        return "unverified"
    return "verify-full" if context.check_hostname else "verify-ca"


def _libpq_options(options: str) -> dict[str, str]:
    parts = re.findall(r"(?:\\.|[^\s\\])+", options)
    pairs = [p.split("=", 1) for p in parts if p != "-c" and "=" in p]
    return {k.removeprefix("-c"): v.replace("\\ ", " ") for k, v in pairs}


def _libpq_facts(cparams: Mapping[str, Any]) -> ConnectFacts:
    startup = _libpq_options(str(cparams.get("options") or ""))
    if cparams.get("application_name"):
        startup["application_name"] = str(cparams["application_name"])
    mode = str(cparams.get("sslmode") or "prefer")
    tls: Verification = (
        "none"
        if mode == "disable"
        else mode
        if mode in ("verify-ca", "verify-full")
        else "unverified"  # type: ignore[assignment]
    )
    # psycopg 3 prepares after prepare_threshold executions unless it is None; psycopg2 never.
    prepared = "prepare_threshold" not in cparams or cparams["prepare_threshold"] is not None
    return ConnectFacts(startup, tls, prepared)


def _psycopg2_facts(cparams: Mapping[str, Any]) -> ConnectFacts:
    return dataclasses.replace(_libpq_facts(cparams), prepared_statements=False)


def _asyncpg_facts(cparams: Mapping[str, Any]) -> ConnectFacts:
    startup = {k: str(v) for k, v in (cparams.get("server_settings") or {}).items()}
    ssl_arg = cparams.get("ssl")
    tls: Verification = (
        "none"
        if ssl_arg in (False, "disable")
        else "verify-full"
        if ssl_arg == "verify-full"
        else _context_verification(ssl_arg)
    )
    caches = (
        cparams.get("statement_cache_size", 100),
        cparams.get("prepared_statement_cache_size", 100),
    )
    return ConnectFacts(startup, tls, any(size != 0 for size in caches))


def _pg8000_facts(cparams: Mapping[str, Any]) -> ConnectFacts:
    startup = {k: str(v) for k, v in (cparams.get("startup_params") or {}).items()}
    if cparams.get("application_name"):
        startup["application_name"] = str(cparams["application_name"])
    context = cparams.get("ssl_context")
    tls: Verification = "none" if context is False else _context_verification(context)
    # pg8000 keeps named statements per connection only for its own cache of unnamed ones.
    return ConnectFacts(startup, tls, False)


def _libpq_tls(tls: TlsClient) -> dict[str, Any]:
    # Plain strings: they can ride in the URL's query (?sslmode=verify-full&sslrootcert=...).
    return dict(tls.libpq_params())


def _asyncpg_tls(tls: TlsClient) -> dict[str, Any]:
    # asyncpg rejects `sslmode` (TypeError); it takes an SSLContext as `ssl`.
    return {"ssl": tls.ssl_context(), **({"direct_tls": True} if tls.direct else {})}


def _pg8000_tls(tls: TlsClient) -> dict[str, Any]:
    # pg8000's default ssl_context (None or True) encrypts WITHOUT verifying the server.
    if tls.direct:
        raise DriverUnsupportedError(
            "pg8000 always asks with an SSLRequest first; it cannot negotiate TLS directly "
            "(TlsClient(direct=True)): use asyncpg, psycopg or psycopg2 (libpq 17+), or direct=False"
        )
    return {"ssl_context": tls.ssl_context()}


def _libpq_startup(settings: Mapping[str, str]) -> dict[str, Any]:
    """libpq (psycopg 3, psycopg2): application_name is a conninfo key, the rest go in `options`."""
    args: dict[str, Any] = {}
    rest = dict(settings)
    if "application_name" in rest:
        args["application_name"] = rest.pop("application_name")
    if rest:
        # libpq splits `options` on spaces; a literal space in a value must be backslash-escaped.
        args["options"] = " ".join(
            f"-c {name}={_libpq_escape(value)}" for name, value in rest.items()
        )
    return args


_LIBPQ_OWN_PARAMETERS = frozenset({"application_name"})


def _libpq_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(" ", "\\ ")


def _asyncpg_startup(settings: Mapping[str, str]) -> dict[str, Any]:
    """asyncpg sends every startup parameter, application_name included, as server_settings."""
    return {"server_settings": dict(settings)} if settings else {}


def _pg8000_startup(settings: Mapping[str, str]) -> dict[str, Any]:
    args: dict[str, Any] = {}
    rest = dict(settings)
    if "application_name" in rest:
        args["application_name"] = rest.pop("application_name")
    if rest:
        args["startup_params"] = rest
    return args


@dataclass(frozen=True)
class Driver:
    """How one DBAPI driver is named, installed and configured."""

    name: str
    module: str
    """Import name; the driver counts as installed when this module can be found."""
    drivername: str
    """SQLAlchemy's drivername; `postgresql+psycopg` serves both Engine and AsyncEngine."""
    kinds: frozenset[Kind]
    """Which engine kinds the driver can back."""
    startup_args: Callable[[Mapping[str, str]], dict[str, Any]]
    """Turns server settings (GUC name -> value) into connect_args sent at connection start-up."""
    dbapi_kwargs: Callable[[str, int, str, str, str], dict[str, Any]]
    """Keyword arguments for the raw DBAPI connect(), from host, port, user, password, dbname."""
    client_args: Callable[[ClientOptions], dict[str, Any]]
    """Turns the common client options into this driver's connect_args."""
    tls_args: Callable[[TlsClient], dict[str, Any]]
    """Turns client TLS settings into this driver's connect arguments."""
    plaintext_args: dict[str, Any]
    """Says "no TLS" explicitly. Every driver's default tries TLS first; pg8000's even builds a
    context from the system CA store on each connect (~35 ms), then falls back to plaintext."""
    facts: Callable[[Mapping[str, Any]], ConnectFacts]
    """Reads back what a connection asked for from the driver's connect parameters (the audit)."""
    connect_autocommit: Callable[[dict[str, Any]], Any] | None
    """Opens a raw autocommit DBAPI connection (sync drivers only); used for admin work."""
    run_script: Callable[[Any, str], None]
    """Runs several `;`-separated statements (a schema file) on a raw connection."""
    own_startup_parameters: frozenset[str] | None = None
    """Settings sent as startup parameters of their own; None means any. libpq sends only
    application_name so; the rest go inside `options`, which PgBouncer refuses."""
    multi_host: bool = True
    """Whether the driver takes several hosts and target_session_attrs (pg8000 does not)."""
    autocommit_behind_pooler: bool = True
    """False if AUTOCOMMIT breaks behind a transaction pooler (pg8000: its unnamed prepared
    statement is parsed on one server connection and executed on another)."""
    prepared_statements_through_pgbouncer: Callable[[Version], bool] | None = None
    """Given a PgBouncer version that tracks prepared statements (max_prepared_statements > 0,
    transaction mode), whether this driver's server-side prepared statements were proven to stay
    correct through it; None for drivers that keep none (their recipe has nothing to turn off)."""

    def supports(self, kind: Kind) -> bool:
        return kind in self.kinds

    def refusal(self, kind: Kind, *, multi_host: bool = False) -> str | None:
        """Why this driver cannot back a `kind` engine (on several hosts), or None if it can."""
        engine = f"{'an' if kind == 'async' else 'a'} {kind} engine"
        if kind not in self.kinds:
            return f"driver {self.name!r} has no {kind} API, so it cannot back {engine}"
        if multi_host and not self.multi_host:
            return (
                f"driver {self.name!r} supports neither multiple hosts nor "
                f"target_session_attrs, so it cannot back {engine} on several hosts"
            )
        return None

    def require(self, kind: Kind, *, multi_host: bool = False) -> None:
        """Raise DriverUnsupportedError, naming the drivers that can, unless `refusal` is None."""
        reason = self.refusal(kind, multi_host=multi_host)
        if reason is not None:
            able = names_supporting(kind, multi_host=multi_host)
            raise DriverUnsupportedError(f"{reason}; use one of: {', '.join(able)}")

    def is_installed(self) -> bool:
        return importlib.util.find_spec(self.module) is not None

    def require_installed(self) -> None:
        if not self.is_installed():
            raise DriverNotInstalledError(
                f"driver {self.name!r} is not installed (module {self.module!r} not importable); "
                f"install it with: pip install 'pytest-pgtopo[{self.name}]'"
            )


def _libpq_kwargs(host: str, port: int, user: str, password: str, dbname: str) -> dict[str, Any]:
    return {"host": host, "port": port, "user": user, "password": password, "dbname": dbname}


def _database_kwargs(host: str, port: int, user: str, password: str, dbname: str) -> dict[str, Any]:
    """asyncpg and pg8000 call the database `database`, not `dbname`."""
    return {"host": host, "port": port, "user": user, "password": password, "database": dbname}


def _connect_psycopg(kwargs: dict[str, Any]) -> Any:
    import psycopg

    return psycopg.connect(**kwargs, autocommit=True, connect_timeout=10)


def _connect_psycopg2(kwargs: dict[str, Any]) -> Any:
    import psycopg2

    conn = psycopg2.connect(**kwargs, connect_timeout=10)
    conn.autocommit = True
    return conn


def _connect_pg8000(kwargs: dict[str, Any]) -> Any:
    import pg8000.dbapi

    conn = pg8000.dbapi.connect(**kwargs, timeout=10)
    conn.autocommit = True
    return conn


def _pg8000_script(connection: Any, sql: str) -> None:
    # pg8000's cursors use the extended protocol, which takes one statement at a time; its
    # execute_simple() sends the whole script as one simple query.
    connection.execute_simple(sql)


# Each quirk below is a named field with the reason beside it; as seen with asyncpg 0.32,
# psycopg 3.3, psycopg2 2.9 and pg8000 1.31 (SQLAlchemy 2.1), which the test suite runs.
def _asyncpg_through_pgbouncer(version: Version) -> bool:
    # Protocol-level Parse/Close with named statements: what PgBouncer 1.21+ tracks and
    # re-prepares on whichever server connection the client gets.
    return version >= (1, 21, 0)


def _psycopg_through_pgbouncer(version: Version) -> bool:
    # psycopg deallocates with a protocol-level Close only on libpq 17+ (older libpq sends a
    # DEALLOCATE statement, which PgBouncer does not track); PgBouncer tracks Close since 1.22.
    import psycopg

    return version >= (1, 22, 0) and psycopg.pq.version() >= 170000


DRIVERS: dict[str, Driver] = {
    driver.name: driver
    for driver in (
        Driver(
            name="asyncpg",
            module="asyncpg",
            drivername="postgresql+asyncpg",
            kinds=frozenset({"async"}),
            # Every startup parameter, application_name included, goes in server_settings.
            startup_args=_asyncpg_startup,
            own_startup_parameters=None,
            dbapi_kwargs=_database_kwargs,  # `database`, not libpq's `dbname`.
            # Two statement caches to turn off behind a pooler: asyncpg's and SQLAlchemy's.
            client_args=_asyncpg_client,
            tls_args=_asyncpg_tls,  # `sslmode` is a TypeError; TLS is an SSLContext as `ssl`.
            plaintext_args={"ssl": False},
            facts=_asyncpg_facts,
            connect_autocommit=None,  # No sync API: never the admin connection.
            run_script=dbapi.execute,
            prepared_statements_through_pgbouncer=_asyncpg_through_pgbouncer,
        ),
        Driver(
            name="psycopg",
            module="psycopg",
            drivername="postgresql+psycopg",
            kinds=frozenset({"sync", "async"}),
            # libpq: application_name is a conninfo key, every other setting rides in `options`.
            startup_args=_libpq_startup,
            own_startup_parameters=_LIBPQ_OWN_PARAMETERS,
            dbapi_kwargs=_libpq_kwargs,
            # Prepares server-side after prepare_threshold executions; None turns that off.
            client_args=_psycopg_client,
            tls_args=_libpq_tls,  # Plain strings (sslmode, sslrootcert): they fit in the URL.
            plaintext_args={"sslmode": "disable"},
            facts=_libpq_facts,
            connect_autocommit=_connect_psycopg,
            # Without parameters, one execute() may hold several statements.
            run_script=dbapi.execute,
            prepared_statements_through_pgbouncer=_psycopg_through_pgbouncer,
        ),
        Driver(
            name="psycopg2",
            module="psycopg2",
            drivername="postgresql+psycopg2",
            kinds=frozenset({"sync"}),
            startup_args=_libpq_startup,  # libpq, as psycopg.
            own_startup_parameters=_LIBPQ_OWN_PARAMETERS,
            dbapi_kwargs=_libpq_kwargs,
            client_args=_psycopg2_client,  # Never prepares server-side: no cache to turn off.
            tls_args=_libpq_tls,
            plaintext_args={"sslmode": "disable"},
            facts=_psycopg2_facts,
            connect_autocommit=_connect_psycopg2,
            run_script=dbapi.execute,  # Sends the whole string as one simple query.
        ),
        Driver(
            name="pg8000",
            module="pg8000",
            drivername="postgresql+pg8000",
            kinds=frozenset({"sync"}),
            # application_name is a connect() argument of its own; other settings go in
            # startup_params, each a startup parameter of its own.
            startup_args=_pg8000_startup,
            own_startup_parameters=None,
            dbapi_kwargs=_database_kwargs,  # `database`, not libpq's `dbname`.
            # Its `timeout` bounds every socket operation, not just the connect: left unset.
            client_args=_pg8000_client,
            # Its default context (None or True) encrypts WITHOUT verifying the server.
            tls_args=_pg8000_tls,
            plaintext_args={"ssl_context": False},
            facts=_pg8000_facts,
            connect_autocommit=_connect_pg8000,
            run_script=_pg8000_script,  # Extended protocol: one statement per execute().
            multi_host=False,  # connect() takes one host, and no target_session_attrs.
            # In AUTOCOMMIT its unnamed prepared statement is parsed on one pooled server
            # connection and executed on another.
            autocommit_behind_pooler=False,
        ),
    )
}


def run_script(driver: str, connection: Any, sql: str) -> None:
    """Run several `;`-separated statements on a raw connection of a sync driver."""
    get(driver).run_script(connection, sql)


DEFAULT_DRIVER: dict[Kind, str] = {"async": "asyncpg", "sync": "psycopg"}

# Preference order for the plugin's own admin connection (CREATE DATABASE and friends).
ADMIN_DRIVER_ORDER = ("psycopg", "psycopg2", "pg8000")


def get(name: str) -> Driver:
    try:
        return DRIVERS[name]
    except KeyError:
        raise DriverUnsupportedError(
            f"unknown driver {name!r}; known drivers: {', '.join(DRIVERS)}"
        ) from None


def names_supporting(kind: Kind, *, multi_host: bool = False) -> list[str]:
    """Drivers that can back a `kind` engine (on several hosts, with `multi_host`)."""
    return [
        name
        for name, driver in DRIVERS.items()
        if driver.refusal(kind, multi_host=multi_host) is None
    ]


def installed() -> list[str]:
    return [name for name, driver in DRIVERS.items() if driver.is_installed()]
