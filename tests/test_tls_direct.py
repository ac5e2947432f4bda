"""Direct TLS negotiation (PostgreSQL 17+): TLS from the first byte, no SSLRequest round trip.

pg_tls needs nothing new for it: a PostgreSQL 17+ server with ssl=on accepts both ways. Before
17 a direct attempt fails, which is what shows that the clients below really went direct.
"""

from __future__ import annotations

import pytest

from pytest_pgtopo import DriverUnsupportedError, Endpoint

from .support import SSL_IN_USE, query_once

# libpq 17+ (psycopg, psycopg2 wheels bundle it) and asyncpg >= 0.30 can; pg8000 cannot.
DIRECT_CAPABLE = ["asyncpg", "psycopg", "psycopg2"]


@pytest.mark.parametrize("driver", DIRECT_CAPABLE)
def test_direct_tls_works_on_17_and_later_and_classic_still_works(
    pg_tls_database: Endpoint, pgtopo_pg_version: int, driver: str
) -> None:
    direct = pg_tls_database.with_direct_tls()
    if pgtopo_pg_version >= 17:
        assert query_once(direct, driver, SSL_IN_USE) is True
    else:
        # Each driver words a closed connection its own way; what matters is that it fails.
        with pytest.raises(Exception):  # noqa: B017, PT011
            query_once(direct, driver, connect_args={"timeout": 5} if driver == "asyncpg" else {})
    assert query_once(pg_tls_database, driver, SSL_IN_USE) is True, "the classic way, still"


def test_the_direct_client_offers_postgresql_alpn(pg_tls_database: Endpoint) -> None:
    direct = pg_tls_database.with_direct_tls()
    assert direct.tls is not None
    assert direct.tls.libpq_params()["sslnegotiation"] == "direct"
    assert direct.connect_args("asyncpg")["direct_tls"] is True
    assert pg_tls_database.tls is not None
    assert "sslnegotiation" not in pg_tls_database.tls.libpq_params()


def test_pg8000_cannot_negotiate_directly(pg_tls_database: Endpoint) -> None:
    with pytest.raises(DriverUnsupportedError, match="pg8000 always asks with an SSLRequest"):
        pg_tls_database.with_direct_tls().connect_args("pg8000")
