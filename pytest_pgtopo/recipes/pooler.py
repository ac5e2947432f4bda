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

from typing import Literal

from ..drivers import Driver
from ..pgbouncer_facts import TRACKED_STARTUP_PARAMETERS
from ..quoting import quote_ident, quote_literal
from .settings import SessionSettings

Pooler = Literal["transaction"]

# GUCs whose value is a list: ALTER ... SET takes the items, not one quoted string.
_LIST_SETTINGS = frozenset({"search_path"})


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
