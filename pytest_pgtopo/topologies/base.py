"""What every topology offers the layers above it: endpoints, server handles, logs, a stop.

A topology composes handles its backend started; it never touches a process, a path or an
OS user. The defaults serve a topology whose one PostgreSQL server is the primary; a topology
with more parts (a pooler, a standby, a proxy) extends them.
"""

from __future__ import annotations

from typing import ClassVar

from ..audit import Target
from ..backends.base import PostgresHandle, ServerHandle
from ..endpoint import Endpoint
from ..servers.process import release_all
from ..types import DatabaseServer


class Topology:
    fixture: ClassVar[str] = "topology"
    """The fixture that yields it, for messages (pg_plain, pg_tls, ...)."""

    def __init__(self, server: PostgresHandle) -> None:
        self.server = server

    @property
    def primary(self) -> Endpoint:
        return self.database_server.endpoint

    @property
    def client_endpoint(self) -> Endpoint:
        """Where engines built for this topology connect (a pooler, a proxy or the server)."""
        return self.primary

    @property
    def database_server(self) -> DatabaseServer:
        """The server on which per-test databases are created (the primary)."""
        return self.server

    def handles(self) -> list[ServerHandle]:
        """Every server of the topology in start order, for logs, --pgtopo-keep and teardown."""
        return [self.server]

    def pids(self) -> list[int]:
        """Every running process of the topology (servers, poolers)."""
        return [handle.pid for handle in self.handles() if handle.pid is not None]

    def audit_targets(self) -> dict[int, Target]:
        """Port -> what is behind it, for --pgtopo-audit."""
        return {self.primary.port: Target()}

    def log_tails(self, lines: int = 20) -> dict[str, str]:
        """Last lines of each server's log, keyed by a label naming the server and its log."""
        return {handle.label: handle.log_tail(lines) for handle in self.handles()}

    def release_database(self, name: str) -> None:
        """Let go of connections to database `name` that the topology itself holds, so it can
        be dropped (a pooler's idle server connections, say). Nothing to do by default."""

    def describe(self) -> str:
        """How a person reaches this topology (DSNs), printed by --pgtopo-keep."""
        return f"{self.fixture} primary: {self.primary.describe()}"

    def stop(self) -> None:
        """Stop every server, last started first; one failing stop does not leak the others."""
        release_all([handle.stop for handle in reversed(self.handles())], f"{self.fixture}")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} primary={self.primary.host}:{self.primary.port}>"
