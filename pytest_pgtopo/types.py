"""Types every layer shares, with no dependency on the rest of the package.

Kept here, at the bottom, so that config, databases, backends and the plugin can all name
them without importing one another.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, Protocol

import sqlalchemy

if TYPE_CHECKING:  # Annotations only: this module imports nothing of the package at run time.
    from .admin import AdminConnection
    from .endpoint import Endpoint

LOOPBACK = "127.0.0.1"
"""Every server and proxy the plugin starts listens here, and only here."""

IsolationMode = Literal["database", "rollback"]
"""How engine fixtures keep tests apart: a database per test, or one rolled-back transaction."""

SchemaSource = (
    sqlalchemy.MetaData | str | os.PathLike[str] | Callable[[sqlalchemy.Engine], Any] | None
)
"""What `pgtopo_schema` returns: a MetaData, a path to a .sql file, a callable taking a sync
Engine, or None for an empty database."""


class DatabaseServer(Protocol):
    """What per-test databases need of a server, wherever it runs: its superuser endpoint on
    the `postgres` database, an autocommit admin connection, and whether it still runs."""

    @property
    def endpoint(self) -> Endpoint: ...

    @property
    def admin(self) -> AdminConnection: ...

    def is_running(self) -> bool: ...
