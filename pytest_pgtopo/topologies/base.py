"""What every topology offers the layers above it: endpoints, servers, logs, a stop."""

from __future__ import annotations

from typing import Protocol

from ..audit import Target
from ..endpoint import Endpoint
from ..servers.postgres import PostgresServer


class Topology(Protocol):
    name: str

    @property
    def client_endpoint(self) -> Endpoint:
        """Where engines built for this topology connect (a pooler, a proxy or the server)."""
        ...

    @property
    def database_server(self) -> PostgresServer:
        """The server on which per-test databases are created (the primary)."""
        ...

    def servers(self) -> list[PostgresServer]:
        """Every PostgreSQL server of the topology, for logs and teardown."""
        ...

    def pids(self) -> list[int]:
        """Every running process of the topology (servers, poolers), for --pgtopo-keep."""
        ...

    def audit_targets(self) -> dict[int, Target]:
        """Port -> what is behind it, for --pgtopo-audit."""
        ...

    def log_tails(self, lines: int = 20) -> dict[str, str]:
        """Last lines of each process's log, keyed by a label naming the process."""
        ...

    def describe(self) -> str:
        """How a person reaches this topology (DSNs), printed by --pgtopo-keep."""
        ...

    def stop(self) -> None: ...
