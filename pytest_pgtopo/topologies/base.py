"""What every topology offers the layers above it: endpoints, servers, logs, a stop.

The defaults serve a topology made of PostgreSQL servers whose first server is the primary;
a topology with more parts (a pooler, a proxy) extends them.
"""

from __future__ import annotations

from ..audit import Target
from ..endpoint import Endpoint
from ..isolation import DatabaseServer
from ..servers.postgres import PostgresServer


class Topology:
    name = "topology"
    fixture = "topology"
    """The fixture that yields it, for messages (pg_plain, pg_tls, ...)."""

    def __init__(self, server: PostgresServer) -> None:
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

    def servers(self) -> list[PostgresServer]:
        """Every PostgreSQL server of the topology, for logs and teardown."""
        return [self.server]

    def pids(self) -> list[int]:
        """Every running process of the topology (servers, poolers), for --pgtopo-keep."""
        processes = [server.process for server in self.servers()]
        return [p.pid for p in processes if p is not None and p.poll() is None]

    def audit_targets(self) -> dict[int, Target]:
        """Port -> what is behind it, for --pgtopo-audit."""
        return {server.endpoint.port: Target() for server in self.servers()}

    def log_tails(self, lines: int = 20) -> dict[str, str]:
        """Last lines of each process's log, keyed by a label naming the process."""
        return {f"postgres {s.name} ({s.log_path})": s.log_tail(lines) for s in self.servers()}

    def describe(self) -> str:
        """How a person reaches this topology (DSNs), printed by --pgtopo-keep."""
        return f"{self.fixture} primary: {self.primary.describe()}"

    def stop(self) -> None:
        for server in reversed(self.servers()):
            server.stop()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} primary={self.primary.host}:{self.primary.port}>"
