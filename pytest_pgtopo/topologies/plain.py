"""`pg_plain`: one PostgreSQL server, nothing in front of it."""

from __future__ import annotations

from ..backends.base import Backend
from .base import Topology


class PlainTopology(Topology):
    """One server. `.primary` is its endpoint, on the `postgres` database."""

    fixture = "pg_plain"

    @classmethod
    def start(cls, backend: Backend) -> PlainTopology:
        return cls(backend.start_postgres("plain"))
