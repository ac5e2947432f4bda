"""`pg_plain`: one PostgreSQL server, nothing in front of it."""

from __future__ import annotations

from ..audit import Target
from ..endpoint import Endpoint
from ..servers.local_backend import LocalBackend
from ..servers.postgres import PostgresServer


class PlainTopology:
    """One server. `.primary` is its endpoint, on the `postgres` database."""

    name = "plain"

    def __init__(self, server: PostgresServer) -> None:
        self.server = server

    @classmethod
    def start(cls, backend: LocalBackend) -> PlainTopology:
        return cls(backend.start_postgres("plain"))

    @property
    def primary(self) -> Endpoint:
        return self.server.endpoint

    @property
    def client_endpoint(self) -> Endpoint:
        return self.primary

    @property
    def database_server(self) -> PostgresServer:
        return self.server

    def servers(self) -> list[PostgresServer]:
        return [self.server]

    def pids(self) -> list[int]:
        process = self.server.process
        return [process.pid] if process is not None and process.poll() is None else []

    def audit_targets(self) -> dict[int, Target]:
        return {self.primary.port: Target()}

    def log_tails(self, lines: int = 20) -> dict[str, str]:
        return {
            f"postgres {self.server.name} ({self.server.log_path})": self.server.log_tail(lines)
        }

    def describe(self) -> str:
        return f"pg_plain primary: {self.primary.describe()}"

    def stop(self) -> None:
        self.server.stop()

    def __repr__(self) -> str:
        return f"<PlainTopology primary={self.primary.host}:{self.primary.port}>"
