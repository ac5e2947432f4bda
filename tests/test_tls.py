"""TLS over real connections, for every driver: encryption is on, and verification really is.

Each refusal is checked against the error the driver actually raises, so a recipe that stopped
verifying (or a topology that stopped demanding TLS) fails here.
"""

from __future__ import annotations

import dataclasses
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pg8000.dbapi
import pytest
import sqlalchemy as sa
import trustme
from sqlalchemy.ext.asyncio import AsyncEngine

from pytest_pgtopo import Endpoint, TlsClient, drivers
from pytest_pgtopo.topologies.bouncer import BouncerTopology
from pytest_pgtopo.topologies.tls import TlsTopology

from .support import SSL_IN_USE, query_once

ALL_DRIVERS = sorted(drivers.DRIVERS)


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA that signed nothing the server has: trusting it must not be enough."""
    path = tmp_path_factory.mktemp("other-ca") / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(path))
    return path


def _with_tls(endpoint: Endpoint, **changes: Any) -> Endpoint:
    assert endpoint.tls is not None
    return dataclasses.replace(endpoint, tls=dataclasses.replace(endpoint.tls, **changes))


# --- the engines are encrypted and verified --------------------------------------------------


def test_sync_engine_connection_is_encrypted(
    tls_sync_engine: sa.Engine, pg_tls_database: Endpoint
) -> None:
    assert pg_tls_database.tls is not None
    assert pg_tls_database.tls.mode == "verify-full"
    with tls_sync_engine.connect() as conn:
        assert conn.scalar(sa.text(SSL_IN_USE)) is True


async def test_async_engine_connection_is_encrypted(tls_engine: AsyncEngine) -> None:
    async with tls_engine.connect() as conn:
        assert await conn.scalar(sa.text(SSL_IN_USE)) is True


def test_ca_path_is_a_pem_a_downstream_factory_can_use(pg_tls: TlsTopology) -> None:
    context = ssl.create_default_context(cafile=str(pg_tls.ca_path))
    assert context.cert_store_stats()["x509_ca"] == 1
    assert pg_tls.ca_path.read_text().startswith("-----BEGIN CERTIFICATE-----")


@pytest.mark.parametrize("driver", ALL_DRIVERS)
def test_endpoint_spells_verify_full_for_each_driver(pg_tls: TlsTopology, driver: str) -> None:
    url, args = pg_tls.primary.url(driver), pg_tls.primary.connect_args(driver)
    if driver in ("psycopg", "psycopg2"):
        assert url.query == {"sslmode": "verify-full", "sslrootcert": str(pg_tls.ca_path)}
        assert args == {}
    else:
        assert url.query == {}
        context = args["ssl" if driver == "asyncpg" else "ssl_context"]
        assert context.verify_mode == ssl.CERT_REQUIRED
        assert context.check_hostname is True


# --- what must be refused ---------------------------------------------------------------------


@pytest.mark.parametrize("driver", ALL_DRIVERS)
def test_plaintext_is_refused(pg_tls_database: Endpoint, driver: str) -> None:
    plain = dataclasses.replace(pg_tls_database, tls=None)
    with pytest.raises(sa.exc.DBAPIError, match="no encryption"):
        query_once(plain, driver)


@pytest.mark.parametrize("driver", ALL_DRIVERS)
def test_a_client_trusting_another_ca_is_refused(
    pg_tls_database: Endpoint, other_ca: Path, driver: str
) -> None:
    with pytest.raises((sa.exc.DBAPIError, ssl.SSLError), match="certificate verify failed"):
        query_once(_with_tls(pg_tls_database, ca_path=other_ca), driver)


@pytest.fixture(scope="module")
def wrong_name(pg_tls_factory: Callable[..., TlsTopology]) -> TlsTopology:
    """A server whose certificate names db.example only, reached at 127.0.0.1."""
    return pg_tls_factory(hostnames=("db.example",))


@pytest.mark.parametrize("driver", ALL_DRIVERS)
def test_verify_full_refuses_a_certificate_for_another_host(
    wrong_name: TlsTopology, driver: str
) -> None:
    endpoint = _with_tls(wrong_name.primary, mode="verify-full")
    with pytest.raises(
        (sa.exc.DBAPIError, ssl.SSLError), match=r"does not match host name|IP address mismatch"
    ):
        query_once(endpoint, driver)
    # The same certificate passes verify-ca: it is the name check that refused it.
    assert query_once(_with_tls(endpoint, mode="verify-ca"), driver, SSL_IN_USE) is True


@pytest.fixture(scope="module")
def mtls(pg_tls_factory: Callable[..., TlsTopology]) -> TlsTopology:
    return pg_tls_factory(client_certificates=True)


@pytest.mark.parametrize("driver", ALL_DRIVERS)
def test_mtls_refuses_a_client_without_a_certificate(mtls: TlsTopology, driver: str) -> None:
    assert mtls.client_cert_path is not None
    assert query_once(mtls.primary, driver, SSL_IN_USE) is True
    anonymous = _with_tls(mtls.primary, cert_path=None, key_path=None)
    with pytest.raises(sa.exc.DBAPIError, match="certificate"):
        query_once(anonymous, driver)


# --- the weaker choices -----------------------------------------------------------------------


@pytest.mark.parametrize("ssl_context", ["default", True])
def test_pg8000_default_encrypts_without_verifying(
    pg_tls: TlsTopology, other_ca: Path, ssl_context: Any
) -> None:
    """pg8000's default (None) and ssl_context=True accept a server signed by a CA nobody trusts."""
    kwargs = dataclasses.replace(pg_tls.primary, tls=None).dbapi_kwargs("pg8000")
    del kwargs["ssl_context"]  # A plain Endpoint says False: no TLS at all.
    if ssl_context is True:
        kwargs["ssl_context"] = True
    conn = pg8000.dbapi.connect(**kwargs)
    try:
        cursor = conn.cursor()
        cursor.execute(SSL_IN_USE)
        assert cursor.fetchone() == [True], "encrypted, yet the server was never verified"
    finally:
        conn.close()
    # The recipe's context does verify: the same server with an untrusted CA is refused.
    with pytest.raises((sa.exc.DBAPIError, ssl.SSLError), match="certificate verify failed"):
        query_once(_with_tls(pg_tls.primary, ca_path=other_ca), "pg8000")


@pytest.mark.parametrize("driver", ALL_DRIVERS)
def test_require_mode_encrypts_but_trusts_anyone(
    pg_tls_database: Endpoint, other_ca: Path, driver: str
) -> None:
    """tls_mode="require" connects even when the client's CA did not sign the server's
    certificate: that is exactly the man-in-the-middle window verify-full closes."""
    untrusting = _with_tls(pg_tls_database, ca_path=other_ca)
    assert query_once(untrusting, driver, SSL_IN_USE, tls_mode="require") is True


# --- TLS terminated at PgBouncer --------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_bouncer(pg_bouncer_factory: Callable[..., BouncerTopology]) -> BouncerTopology:
    return pg_bouncer_factory(client_tls=True)


@pytest.mark.parametrize("driver", ALL_DRIVERS)
def test_pgbouncer_terminates_client_tls(tls_bouncer: BouncerTopology, driver: str) -> None:
    endpoint = tls_bouncer.bouncer
    assert endpoint.tls is not None
    assert tls_bouncer.ca_path == endpoint.tls.ca_path
    assert query_once(endpoint, driver, "SELECT 1", pooler="transaction") == 1
    with pytest.raises(sa.exc.DBAPIError):
        query_once(
            dataclasses.replace(endpoint, tls=None),
            driver,
            pooler="transaction",
        )
    tls_clients = [c for c in tls_bouncer.show_clients() if c["database"] == "pgbouncer"]
    assert tls_clients
    assert all(c["tls"] for c in tls_clients), "the console connection itself is over TLS"


def test_tls_client_modes_build_matching_contexts(other_ca: Path) -> None:
    full = TlsClient(other_ca).ssl_context()
    ca_only = TlsClient(other_ca, "verify-ca").ssl_context()
    require = TlsClient(other_ca, "require").ssl_context()
    assert (full.check_hostname, full.verify_mode) == (True, ssl.CERT_REQUIRED)
    assert (ca_only.check_hostname, ca_only.verify_mode) == (False, ssl.CERT_REQUIRED)
    assert (require.check_hostname, require.verify_mode) == (False, ssl.CERT_NONE)
