"""Engines built the way production should build them, for any endpoint and driver.

These are public: call them from your own fixtures or application code, not only through the
plugin's fixtures. Each returns a plain SQLAlchemy Engine or AsyncEngine.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import sqlalchemy
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.ext.asyncio import create_async_engine as sa_create_async_engine

from .. import drivers
from ..drivers import ClientOptions, Kind
from ..endpoint import Endpoint, MultiHostEndpoint
from ..errors import DriverUnsupportedError
from ..tls import TlsMode
from . import pooler as pooler_module
from .pooler import Pooler
from .settings import SessionSettings

DEFAULT_CLIENT = ClientOptions(command_timeout=60.0)


def engine_arguments(
    endpoint: Endpoint | MultiHostEndpoint,
    driver: str,
    kind: Kind,
    *,
    settings: SessionSettings,
    client: ClientOptions,
    engine_kwargs: dict[str, Any],
    pooler: Pooler | None = None,
    tls_mode: TlsMode | None = None,
) -> tuple[sqlalchemy.URL, dict[str, Any]]:
    """The URL and create_engine() keyword arguments the recipes use, for inspection or reuse.

    Behind a PgBouncer (`pooler=`), only the startup parameters it tracks are sent; apply the
    rest with `durable_settings_sql()` on the server. `pooler="transaction"` turns every
    prepared-statement cache off (safe behind any PgBouncer in transaction mode); a
    `PgBouncerPooler` (a topology's `.pooler`) keeps a driver's caches on where that PgBouncer
    tracks prepared statements and the driver was proven safe through it. `tls_mode` overrides how a TLS endpoint verifies
    the server: "require" encrypts without checking who answers (weaker; see README).
    """
    if tls_mode is not None:
        endpoint = endpoint.with_tls_mode(tls_mode)
    spec = drivers.get(driver)
    # Before the endpoint spells a URL: the suggestion names drivers for this kind of engine.
    spec.require(kind, multi_host=isinstance(endpoint, MultiHostEndpoint))
    spec.require_installed()
    kwargs = dict(engine_kwargs)
    startup = settings.server_settings()
    if pooler is not None:
        pgbouncer = pooler_module.as_pgbouncer(pooler)
        pooler_module.check_address(pgbouncer, endpoint)
        # Any PgBouncer refuses startup parameters it does not track, whatever its pool mode.
        startup = pooler_module.startup_settings(settings, spec)
        if not pooler_module.keeps_prepared_statements(pgbouncer, spec):
            client = dataclasses.replace(client, prepared_statements=False)
        transaction_pooling = pgbouncer.pool_mode != "session"
        autocommit = kwargs.get("isolation_level") == "AUTOCOMMIT"
        if transaction_pooling and autocommit and not spec.autocommit_behind_pooler:
            raise DriverUnsupportedError(
                f"driver {driver!r} fails in AUTOCOMMIT behind a transaction pooler (its unnamed "
                "statement is parsed on one server connection and executed on another); use "
                "transactions, or psycopg, psycopg2 or asyncpg"
            )
        # Recycle before PgBouncer's or a load balancer's idle timeouts close it under us.
        kwargs.setdefault("pool_recycle", 1800)
    connect_args = {
        **endpoint.connect_args(driver),
        **spec.client_args(client),
        **spec.startup_args(startup),
        **kwargs.pop("connect_args", {}),
    }
    # A pooled connection may have been closed by a server restart or failover: test it first.
    kwargs.setdefault("pool_pre_ping", True)
    return endpoint.url(driver), {"connect_args": connect_args, **kwargs}


def create_engine(
    endpoint: Endpoint | MultiHostEndpoint,
    driver: str = drivers.DEFAULT_DRIVER["sync"],
    *,
    settings: SessionSettings | None = None,
    client: ClientOptions = DEFAULT_CLIENT,
    pooler: Pooler | None = None,
    tls_mode: TlsMode | None = None,
    **engine_kwargs: Any,
) -> sqlalchemy.Engine:
    """A sync Engine for `endpoint` with `settings` applied to every connection.

    `engine_kwargs` go to sqlalchemy.create_engine(); `connect_args` in them are merged last.
    `pooler="transaction"` adapts the engine to PgBouncer in transaction mode.
    """
    url, kwargs = engine_arguments(
        endpoint,
        driver,
        "sync",
        settings=settings or SessionSettings(),
        client=client,
        engine_kwargs=engine_kwargs,
        pooler=pooler,
        tls_mode=tls_mode,
    )
    return sqlalchemy.create_engine(url, **kwargs)


def create_async_engine(
    endpoint: Endpoint | MultiHostEndpoint,
    driver: str = drivers.DEFAULT_DRIVER["async"],
    *,
    settings: SessionSettings | None = None,
    client: ClientOptions = DEFAULT_CLIENT,
    pooler: Pooler | None = None,
    tls_mode: TlsMode | None = None,
    **engine_kwargs: Any,
) -> AsyncEngine:
    """An AsyncEngine for `endpoint`; `driver` must be async-capable (asyncpg or psycopg)."""
    url, kwargs = engine_arguments(
        endpoint,
        driver,
        "async",
        settings=settings or SessionSettings(),
        client=client,
        engine_kwargs=engine_kwargs,
        pooler=pooler,
        tls_mode=tls_mode,
    )
    return sa_create_async_engine(url, **kwargs)
