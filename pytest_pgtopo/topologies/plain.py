"""`pg_plain`: one PostgreSQL server, nothing in front of it."""

from __future__ import annotations

from ..servers.local_backend import LocalBackend
from .base import Topology


class PlainTopology(Topology):
    """One server. `.primary` is its endpoint, on the `postgres` database."""

    name = "plain"
    fixture = "pg_plain"

    @classmethod
    def start(cls, backend: LocalBackend) -> PlainTopology:
        return cls(backend.start_postgres("plain"))
