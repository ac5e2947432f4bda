"""Where a client connects: one host:port with credentials, spelled for any driver."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from sqlalchemy import URL

from . import drivers
from .errors import DriverUnsupportedError
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
    """How to verify the server over TLS; None for plain TCP, said explicitly to the driver
    (sslmode=disable, ssl=False, ssl_context=False) so it does not try TLS first."""

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
        """What the URL cannot carry for `driver`: the TLS setting of asyncpg and pg8000 (an
        SSLContext, or False for plain TCP); empty for libpq drivers, whose sslmode is in the URL."""
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
        args = spec.plaintext_args if self.tls is None else spec.tls_args(self.tls)
        strings = {k: v for k, v in args.items() if isinstance(v, str)}
        return strings, {k: v for k, v in args.items() if k not in strings}

    def with_dbname(self, dbname: str) -> Endpoint:
        return dataclasses.replace(self, dbname=dbname)

    def with_tls_mode(self, mode: TlsMode) -> Endpoint:
        """The same endpoint verified differently (`require` is weaker: no server identity check)."""
        if self.tls is None:
            raise ValueError(f"{self.host}:{self.port} is a plain TCP endpoint; it has no TLS mode")
        return dataclasses.replace(self, tls=dataclasses.replace(self.tls, mode=mode))

    def with_direct_tls(self, direct: bool = True) -> Endpoint:
        """The same endpoint negotiating TLS directly (PostgreSQL 17+; see TlsClient.direct)."""
        if self.tls is None:
            raise ValueError(f"{self.host}:{self.port} is a plain TCP endpoint; it has no TLS")
        return dataclasses.replace(self, tls=dataclasses.replace(self.tls, direct=direct))

    def describe(self) -> str:
        """A libpq-style DSN with the password, for printing to the person running the tests."""
        return f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/{self.dbname}"


@dataclass(frozen=True)
class MultiHostEndpoint:
    """Several servers in one URL; the driver picks by `target_session_attrs` (libpq semantics:
    any, read-write, read-only, primary, standby, prefer-standby), trying hosts in order.

    The URL takes the form SQLAlchemy's parser accepts, `...@/db?host=h1:p1&host=h2:p2`; the
    form `...@h1:p1,h2:p2/db` fails there with "invalid literal for int()".
    """

    nodes: tuple[Endpoint, ...]
    target_session_attrs: str = "read-write"

    @property
    def dbname(self) -> str:
        return self.nodes[0].dbname

    def url(self, driver: str) -> URL:
        spec = drivers.get(driver)
        if not spec.multi_host:
            raise DriverUnsupportedError(
                f"driver {driver!r} supports neither multiple hosts nor target_session_attrs; "
                f"use one of: {', '.join(n for n, d in drivers.DRIVERS.items() if d.multi_host)}"
            )
        first = self.nodes[0]
        return URL.create(
            spec.drivername,
            username=first.user,
            password=first.password,
            database=first.dbname,
            query={
                "host": [f"{node.host}:{node.port}" for node in self.nodes],
                "target_session_attrs": self.target_session_attrs,
                **first._tls_args(driver)[0],
            },
        )

    def connect_args(self, driver: str) -> dict[str, Any]:
        return self.nodes[0].connect_args(driver)

    def with_dbname(self, dbname: str) -> MultiHostEndpoint:
        return dataclasses.replace(self, nodes=tuple(n.with_dbname(dbname) for n in self.nodes))

    def with_tls_mode(self, mode: TlsMode) -> MultiHostEndpoint:
        return dataclasses.replace(self, nodes=tuple(n.with_tls_mode(mode) for n in self.nodes))

    def describe(self) -> str:
        return " | ".join(node.describe() for node in self.nodes)
