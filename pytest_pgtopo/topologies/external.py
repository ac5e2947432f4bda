"""`--pgtopo-backend=external`: pg_plain is a server someone else runs, given by its URL.

Only pg_plain can be served this way: the other topologies need servers the plugin starts
and controls (a pooler in front, TLS settings, a replica to promote).
"""

from __future__ import annotations

import sqlalchemy

from ..admin import AdminConnection, wait_until_connectable
from ..audit import Target
from ..endpoint import Endpoint
from ..errors import PgtopoError
from ..servers.postgres import PostgresServer
from .base import Topology


def endpoint_from_url(url: str) -> Endpoint:
    """An Endpoint from `postgresql://user:password@host:port/dbname` (plain TCP)."""
    parsed = sqlalchemy.make_url(url)
    if not (parsed.host and parsed.username):
        raise PgtopoError(
            f"the external URL {parsed.render_as_string()} needs at least a user and a host, "
            "e.g. postgresql://app:secret@db.internal:5432/postgres"
        )
    return Endpoint(
        parsed.host,
        parsed.port or 5432,
        parsed.username,
        parsed.password or "",
        parsed.database or "postgres",
    )


class ExternalServer:
    """A server the plugin does not run: only a connection to it."""

    name = "external"

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.admin: AdminConnection = wait_until_connectable(endpoint, timeout=30.0)

    def is_running(self) -> bool:
        return True  # Not ours to know: a failing drop is reported.

    def close(self) -> None:
        self.admin.close()


class ExternalTopology(Topology):
    """pg_plain on an external server. Per-test databases need the CREATEDB privilege."""

    name = "plain"
    fixture = "pg_plain"

    def __init__(self, url: str) -> None:
        self.external = ExternalServer(endpoint_from_url(url))

    @property
    def primary(self) -> Endpoint:
        return self.external.endpoint

    @property
    def database_server(self) -> ExternalServer:
        return self.external

    def servers(self) -> list[PostgresServer]:
        return []  # None of ours: nothing to stop, no log to read.

    def audit_targets(self) -> dict[int, Target]:
        return {self.primary.port: Target()}

    def stop(self) -> None:
        self.external.close()
