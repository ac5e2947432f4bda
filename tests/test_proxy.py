"""The in-process proxy as a TLS sidecar and as a fault injector, against real servers."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
import trustme

from pytest_pgtopo import Endpoint, TlsClient, create_engine, drivers
from pytest_pgtopo.topologies.proxied import ProxiedEndpoint
from pytest_pgtopo.topologies.tls import TlsTopology

from .support import SSL_IN_USE, query_once

ALL_DRIVERS = sorted(drivers.DRIVERS)
SYNC_DRIVERS = sorted(name for name, spec in drivers.DRIVERS.items() if spec.supports("sync"))


@pytest.mark.parametrize("driver", ALL_DRIVERS)
def test_sidecar_gives_a_plaintext_app_verified_tls_upstream(
    pg_tls_sidecar: ProxiedEndpoint, pg_tls_database: Endpoint, driver: str
) -> None:
    local = pg_tls_sidecar.endpoint.with_dbname(pg_tls_database.dbname)
    assert local.tls is None, "the app needs no TLS settings at all"
    # The server sees an encrypted connection: the proxy's upstream leg.
    assert query_once(local, driver, SSL_IN_USE) is True


def test_sidecar_refuses_a_server_it_cannot_verify(pg_tls: TlsTopology, tmp_path: Path) -> None:
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    untrusting = dataclasses.replace(pg_tls.primary, tls=TlsClient(other_ca))
    sidecar = ProxiedEndpoint(untrusting, tls_upstream=True)
    try:
        with pytest.raises(sa.exc.DBAPIError):
            query_once(sidecar.endpoint, "psycopg")
        assert any("certificate verify failed" in e for e in sidecar.proxy.upstream_errors)
    finally:
        sidecar.close()


@pytest.mark.parametrize("driver", SYNC_DRIVERS)
def test_pre_ping_rides_out_a_cut(
    pg_fault_proxy: Callable[[Endpoint], ProxiedEndpoint], pg_plain_database: Endpoint, driver: str
) -> None:
    faulty = pg_fault_proxy(pg_plain_database)
    pinging = create_engine(faulty.endpoint, driver)
    trusting = create_engine(faulty.endpoint, driver, pool_pre_ping=False)
    try:
        for engine in (pinging, trusting):
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        faulty.cut()
        with pinging.connect() as conn:
            assert conn.scalar(sa.text("SELECT 42")) == 42
        with pytest.raises(sa.exc.DBAPIError) as info, trusting.connect() as conn:
            conn.execute(sa.text("SELECT 42"))
        assert info.value.connection_invalidated, info.value
    finally:
        pinging.dispose()
        trusting.dispose()


def test_latency_is_added_to_every_round_trip(
    pg_fault_proxy: Callable[[Endpoint], ProxiedEndpoint], pg_plain_database: Endpoint
) -> None:
    faulty = pg_fault_proxy(pg_plain_database)
    engine = create_engine(faulty.endpoint, "psycopg", pool_pre_ping=False)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
            faulty.proxy.latency = 0.2
            started = time.monotonic()
            conn.execute(sa.text("SELECT 1"))
            # A request and its reply each wait once.
            assert time.monotonic() - started >= 0.4
    finally:
        engine.dispose()


def test_refused_connections_until_restore(
    pg_fault_proxy: Callable[[Endpoint], ProxiedEndpoint], pg_plain_database: Endpoint
) -> None:
    faulty = pg_fault_proxy(pg_plain_database)
    faulty.refuse()
    with pytest.raises(sa.exc.DBAPIError):
        query_once(faulty.endpoint, "psycopg")
    faulty.restore()
    assert query_once(faulty.endpoint, "psycopg", "SELECT 7") == 7
