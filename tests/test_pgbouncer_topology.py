"""PgBouncer in front of a real server: pooling, wildcard databases, console, restart, errors."""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pg8000.dbapi
import psycopg
import psycopg2
import pytest

from pytest_pgtopo.backends.local import LocalBackend
from pytest_pgtopo.errors import BinaryNotFoundError, PgtopoError, ServerStartError
from pytest_pgtopo.pgbouncer_facts import refused_startup_parameter
from pytest_pgtopo.servers import pgbouncer as pgbouncer_module
from pytest_pgtopo.servers.pgbouncer import PgBouncerBinary, check_settings, parse_version
from pytest_pgtopo.topologies.bouncer import BouncerOptions, BouncerTopology

from .support import wait_for

TIMEOUT = 10.0


@pytest.fixture
def topology(backend: LocalBackend) -> Iterator[BouncerTopology]:
    topology = BouncerTopology.start(backend)
    yield topology
    topology.stop()


def _uid_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])


def test_queries_go_through_the_bouncer_to_the_server(
    topology: BouncerTopology, backend: LocalBackend
) -> None:
    bouncer, primary = topology.bouncer, topology.primary
    assert topology.client_endpoint == bouncer
    assert bouncer.port != primary.port
    assert (bouncer.user, bouncer.password, bouncer.dbname) == (
        primary.user,
        primary.password,
        "postgres",
    )
    process = topology.pgbouncer.process
    assert process is not None
    assert _uid_of(process.pid) == backend.user.uid
    with psycopg.connect(**bouncer.dbapi_kwargs("psycopg")) as conn:
        assert conn.execute("SELECT inet_server_port()").fetchone() == (primary.port,)
    assert f":{bouncer.port}/postgres" in topology.describe()
    assert set(topology.log_tails()) == {
        f"postgres bouncer-pg ({topology.server.log_path})",
        f"pgbouncer ({topology.pgbouncer.log_path})",
    }


def test_every_sync_driver_connects_with_defaults(topology: BouncerTopology) -> None:
    """No ignore_startup_parameters is needed for what the drivers send by default."""
    bouncer = topology.bouncer
    for driver, connect in (("psycopg", psycopg.connect), ("psycopg2", psycopg2.connect)):
        conn: Any = connect(**bouncer.dbapi_kwargs(driver))
        with conn.cursor() as cursor:
            cursor.execute("SELECT 1")
            assert cursor.fetchone() == (1,)
        conn.close()
    conn = pg8000.dbapi.connect(**bouncer.dbapi_kwargs("pg8000"))
    cursor = conn.cursor()
    cursor.execute("SELECT 1")
    assert cursor.fetchone() == [1]
    conn.close()


def test_stock_bouncer_refuses_startup_options(topology: BouncerTopology) -> None:
    """As in production: a recipe sending statement_timeout at startup must fail here too."""
    message = refused_startup_parameter(
        topology.pooler.version, "statement_timeout", in_options=True
    )
    with pytest.raises(psycopg.OperationalError, match=message):
        psycopg.connect(
            **topology.bouncer.dbapi_kwargs("psycopg"), options="-c statement_timeout=5"
        )


def test_show_pools_reports_transaction_pooling(topology: BouncerTopology) -> None:
    psycopg.connect(**topology.bouncer.dbapi_kwargs("psycopg")).close()
    pools = {row["database"]: row for row in topology.show_pools()}
    assert pools["postgres"]["pool_mode"] == "transaction"
    assert pools["postgres"]["user"] == topology.primary.user
    config = {row["key"]: row["value"] for row in topology.pgbouncer.show("CONFIG")}
    assert config["default_pool_size"] == "4"
    assert config["max_client_conn"] == "200"


def test_database_created_after_start_is_reachable(topology: BouncerTopology) -> None:
    topology.server.admin.execute("CREATE DATABASE made_later")
    with psycopg.connect(
        **topology.bouncer.with_dbname("made_later").dbapi_kwargs("psycopg")
    ) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("made_later",)
    assert "made_later" in {row["database"] for row in topology.show_pools()}


def test_kill_lets_a_plain_drop_database_through(topology: BouncerTopology) -> None:
    admin = topology.server.admin
    admin.execute("CREATE DATABASE dropped_soon")
    endpoint = topology.bouncer.with_dbname("dropped_soon")
    with psycopg.connect(**endpoint.dbapi_kwargs("psycopg")) as conn:
        conn.execute("SELECT 1")
    # The bouncer keeps its server connection after the client left, as in production; a plain
    # DROP would wait 5 s for it and then fail with "being accessed by other users".
    sessions = "SELECT count(*) FROM pg_stat_activity WHERE datname = 'dropped_soon'"
    assert admin.scalar(sessions) == 1
    topology.kill("dropped_soon")
    admin.execute("DROP DATABASE dropped_soon")


def test_pause_holds_new_queries_until_resume(topology: BouncerTopology) -> None:
    kwargs = topology.bouncer.dbapi_kwargs("psycopg")
    results: list[object] = []
    finished = threading.Event()

    def query() -> None:
        try:
            with psycopg.connect(**kwargs, connect_timeout=int(TIMEOUT)) as conn:
                results.append(conn.execute("SELECT 7").fetchone())
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below.
            results.append(exc)
        finished.set()

    def waiting_clients() -> int:
        return sum(
            row["cl_waiting"] for row in topology.show_pools() if row["database"] == "postgres"
        )

    topology.pause()
    try:
        threading.Thread(target=query, daemon=True).start()
        wait_for(lambda: waiting_clients() > 0, "the client to queue behind PAUSE", TIMEOUT)
        assert not finished.is_set(), results
    finally:
        topology.resume()
    assert finished.wait(TIMEOUT), "the query did not finish after RESUME"
    assert results == [(7,)]


def test_restart_keeps_the_port_and_drops_old_connections(topology: BouncerTopology) -> None:
    port = topology.bouncer.port
    old = psycopg.connect(**topology.bouncer.dbapi_kwargs("psycopg"), autocommit=True)
    old.execute("SELECT 1")
    topology.restart_bouncer()
    assert topology.bouncer.port == port
    with pytest.raises(psycopg.OperationalError):
        old.execute("SELECT 1")
    old.close()
    with psycopg.connect(**topology.bouncer.dbapi_kwargs("psycopg")) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    topology.reconnect()
    assert topology.show_stats(), "the console still answers after a restart"


def test_setting_newer_than_the_binary_is_refused_before_anything_starts(
    backend: LocalBackend,
) -> None:
    old = PgBouncerBinary(Path("/usr/sbin/pgbouncer"), "test", (1, 18, 0))
    with pytest.raises(
        PgtopoError,
        match=r"PgBouncer 1\.18\.0 .* does not know max_prepared_statements \(added in 1\.21\); "
        "it would refuse to start",
    ):
        check_settings(old, {"max_prepared_statements": "100"})
    check_settings(dataclasses.replace(old, version=(1, 21, 0)), {"max_prepared_statements": "100"})

    binary = pgbouncer_module.find_pgbouncer(None)
    if binary.knows("max_prepared_statements"):
        pytest.skip(f"PgBouncer {binary.version_string} knows max_prepared_statements")
    options = BouncerOptions(extra_settings={"max_prepared_statements": "100"})
    with pytest.raises(PgtopoError, match="does not know max_prepared_statements"):
        BouncerTopology.start(backend, options)
    assert backend.workspace_path is None, "no server was started, not even a workspace made"


def test_managed_setting_is_refused(backend: LocalBackend) -> None:
    with pytest.raises(PgtopoError, match="listen_port is managed by pytest-pgtopo"):
        BouncerTopology.start(backend, BouncerOptions(extra_settings={"listen_port": "6432"}))


def test_start_failure_carries_ini_and_log_and_cleans_up(backend: LocalBackend) -> None:
    options = BouncerOptions(extra_settings={"default_pool_size": "lots"})
    with pytest.raises(ServerStartError) as info:
        BouncerTopology.start(backend, options)
    message = str(info.value)
    assert "default_pool_size = lots" in message, "the error shows the ini it started with"
    assert 'invalid value "lots" for parameter default_pool_size' in message, "and pgbouncer's log"
    left = [p.name for p in backend.workspace.path.iterdir() if p.name != "initdb"]
    assert left == [], "server and bouncer dirs are gone"


def test_stop_leaves_no_process_and_no_files(backend: LocalBackend) -> None:
    topology = BouncerTopology.start(backend)
    bouncer, server = topology.pgbouncer.process, topology.server.process
    assert bouncer is not None
    assert server is not None
    directories = [topology.pgbouncer.directory, topology.server.directory]
    assert sorted(topology.pids()) == sorted([bouncer.pid, server.pid])
    topology.stop()
    assert topology.pids() == []
    assert bouncer.poll() is not None
    assert server.poll() is not None
    assert not any(path.exists() for path in directories)
    workspace = backend.workspace.path
    backend.close()
    assert not workspace.exists()


def test_version_parsing() -> None:
    assert parse_version("PgBouncer 1.18.0\nlibevent 2.1.12-stable\n") == (1, 18, 0)
    assert parse_version("PgBouncer 1.24") == (1, 24, 0)
    with pytest.raises(BinaryNotFoundError, match="cannot read a PgBouncer version"):
        parse_version("pgbouncer, some build")


def test_missing_binary_says_how_to_install(scratch: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGTOPO_PGBOUNCER_BIN", raising=False)
    monkeypatch.setenv("PATH", str(scratch))
    monkeypatch.setattr(pgbouncer_module, "WELL_KNOWN_PATHS", (scratch / "pgbouncer",))
    with pytest.raises(BinaryNotFoundError) as info:
        pgbouncer_module.find_pgbouncer(None)
    message = str(info.value)
    assert f"well-known path: {scratch / 'pgbouncer'}" in message
    assert "apt-get install pgbouncer" in message
    assert "brew install pgbouncer" in message
    assert "PGTOPO_PGBOUNCER_BIN" in message


def test_wrong_explicit_binary_is_reported_not_skipped(
    scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = pgbouncer_module.find_pgbouncer(None).path
    monkeypatch.setenv("PGTOPO_PGBOUNCER_BIN", str(scratch / "nope"))
    with pytest.raises(BinaryNotFoundError, match=r"PGTOPO_PGBOUNCER_BIN is .*nope, which is not"):
        pgbouncer_module.find_pgbouncer(None)
    found = pgbouncer_module.find_pgbouncer(real)  # The explicit path wins over the env.
    assert found.source == "explicit path"
    assert os.access(found.path, os.X_OK)
