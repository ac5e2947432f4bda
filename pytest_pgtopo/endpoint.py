"""Where a client connects: one host:port with credentials, spelled for any driver."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from sqlalchemy import URL

from . import drivers
from .tls import TlsClient, TlsMode


@dataclass(frozen=True)
class Endpoint:
    """One place a client can connect to: a server, a pooler or a proxy.

    Hand `url(driver)` and `connect_args(driver)` to your own engine factory to point it at a
    topology; the two together carry everything a connection needs.
    """

    host: str
    port: int
    user: str
    password: str = dataclasses.field(repr=False)
    dbname: str
    tls: TlsClient | None = None
    """How to verify the server over TLS; None for plain TCP."""

    def url(self, driver: str) -> URL:
        """A SQLAlchemy URL for `driver` (asyncpg, psycopg, psycopg2 or pg8000).

        TLS settings that are plain strings (libpq's sslmode, sslrootcert, ...) ride in the query.
        """
        return URL.create(
            drivers.get(driver).drivername,
            username=self.user,
            password=self.password,
            host=self.host,
            port=self.port,
            database=self.dbname,
            query=self._tls_args(driver)[0],
        )

    def connect_args(self, driver: str) -> dict[str, Any]:
        """What the URL cannot carry for `driver`: an SSLContext for asyncpg and pg8000 over TLS;
        empty for plain TCP and for libpq drivers."""
        return self._tls_args(driver)[1]

    def dbapi_kwargs(self, driver: str) -> dict[str, Any]:
        """Keyword arguments for the driver's own connect(), bypassing SQLAlchemy."""
        kwargs = drivers.get(driver).dbapi_kwargs(
            self.host, self.port, self.user, self.password, self.dbname
        )
        in_url, objects = self._tls_args(driver)
        return {**kwargs, **in_url, **objects}

    def _tls_args(self, driver: str) -> tuple[dict[str, str], dict[str, Any]]:
        """(string arguments for the URL query, other arguments for connect_args)."""
        spec = drivers.get(driver)
        if self.tls is None:
            return {}, {}
        args = spec.tls_args(self.tls)
        strings = {k: v for k, v in args.items() if isinstance(v, str)}
        return strings, {k: v for k, v in args.items() if k not in strings}

    def with_dbname(self, dbname: str) -> Endpoint:
        return dataclasses.replace(self, dbname=dbname)

    def with_tls_mode(self, mode: TlsMode) -> Endpoint:
        """The same endpoint verified differently (`require` is weaker: no server identity check)."""
        if self.tls is None:
            raise ValueError(f"{self.host}:{self.port} is a plain TCP endpoint; it has no TLS mode")
        return dataclasses.replace(self, tls=dataclasses.replace(self.tls, mode=mode))

    def describe(self) -> str:
        """A libpq-style DSN with the password, for printing to the person running the tests."""
        return f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/{self.dbname}"
