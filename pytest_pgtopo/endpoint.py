"""Where a client connects: one host:port with credentials, spelled for any driver."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from sqlalchemy import URL

from . import drivers


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

    def url(self, driver: str) -> URL:
        """A SQLAlchemy URL for `driver` (asyncpg, psycopg, psycopg2 or pg8000)."""
        return URL.create(
            drivers.get(driver).drivername,
            username=self.user,
            password=self.password,
            host=self.host,
            port=self.port,
            database=self.dbname,
        )

    def connect_args(self, driver: str) -> dict[str, Any]:
        """What the URL cannot carry for `driver` (TLS contexts, for example); empty for plain TCP."""
        drivers.get(driver)
        return {}

    def dbapi_kwargs(self, driver: str) -> dict[str, Any]:
        """Keyword arguments for the driver's own connect(), bypassing SQLAlchemy."""
        kwargs = drivers.get(driver).dbapi_kwargs(
            self.host, self.port, self.user, self.password, self.dbname
        )
        return {**kwargs, **self.connect_args(driver)}

    def with_dbname(self, dbname: str) -> Endpoint:
        return dataclasses.replace(self, dbname=dbname)

    def describe(self) -> str:
        """A libpq-style DSN with the password, for printing to the person running the tests."""
        return f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/{self.dbname}"
