"""The local backend: binaries, the initdb cache, users, auth, start failures and clean stops."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from pytest_pgtopo.backends.local import LocalBackend
from pytest_pgtopo.errors import BinaryNotFoundError, ServerStartError
from pytest_pgtopo.servers import binaries as binaries_module
from pytest_pgtopo.servers.initdb_cache import default_cache_root
from pytest_pgtopo.topologies.plain import PlainTopology


def _uid_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])


def test_server_runs_as_unprivileged_user_on_loopback(backend: LocalBackend) -> None:
    topology = PlainTopology.start(backend)
    try:
        assert topology.server.process is not None
        uid = _uid_of(topology.server.process.pid)
        if os.geteuid() == 0:
            assert uid != 0, "the postmaster must not run as root"
        assert uid == backend.user.uid
        admin = topology.server.admin
        assert admin.scalar("SHOW listen_addresses") == "127.0.0.1"
        assert admin.scalar("SHOW fsync") == "off"
        assert admin.scalar("SHOW unix_socket_directories") == str(topology.server.socket_dir)
    finally:
        topology.stop()


def test_password_auth_only_with_a_fresh_secret(backend: LocalBackend) -> None:
    topology = PlainTopology.start(backend)
    try:
        primary = topology.primary
        admin = topology.server.admin
        methods = {
            row
            for row in [
                admin.scalar("SELECT string_agg(DISTINCT auth_method, ',') FROM pg_hba_file_rules")
            ]
        }
        assert methods == {"scram-sha-256"}
        assert admin.scalar("SHOW password_encryption") == "scram-sha-256"
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(**primary.dbapi_kwargs("psycopg") | {"password": "wrong"})
        # The cached cluster's password was rotated away on start.
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(
                **primary.dbapi_kwargs("psycopg") | {"password": backend.cluster.password}
            )
        psycopg.connect(**primary.dbapi_kwargs("psycopg")).close()
    finally:
        topology.stop()


def test_stop_leaves_no_process_and_no_files(backend: LocalBackend) -> None:
    topology = PlainTopology.start(backend)
    process, directory = topology.server.process, topology.server.directory
    assert process is not None
    assert directory.is_dir()
    topology.stop()
    assert process.poll() is not None
    assert not directory.exists()
    workspace = backend.workspace.path
    backend.close()
    assert not workspace.exists()


def test_initdb_runs_once_then_the_cache_is_reused(
    scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = scratch / "cache"
    monkeypatch.setenv("PGTOPO_CACHE_DIR", str(cache))
    stamps = []
    for _ in range(2):
        backend = LocalBackend(
            pg_bindir=None, pg_bindir_source="default", tmp_root=scratch, keep=False
        )
        PlainTopology.start(backend).stop()
        backend.close()
        entries = [p for p in cache.iterdir()]
        assert len(entries) == 1, entries
        stamps.append((entries[0].name, (entries[0] / "data" / "PG_VERSION").stat().st_mtime_ns))
    assert stamps[0] == stamps[1], "the second run must reuse the cached cluster, not re-run initdb"


RACE_SCRIPT = """
import sys
from pathlib import Path
from pytest_pgtopo.backends.local import LocalBackend
from pytest_pgtopo.topologies.plain import PlainTopology
backend = LocalBackend(pg_bindir=None, pg_bindir_source="default", tmp_root=Path(sys.argv[1]), keep=False)
topology = PlainTopology.start(backend)
print(topology.server.admin.scalar("SELECT 40 + 2"))
topology.stop()
backend.close()
"""


def test_processes_racing_to_fill_the_cache_all_succeed(scratch: Path) -> None:
    cache = scratch / "cache"
    env = {**os.environ, "PGTOPO_CACHE_DIR": str(cache)}
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACE_SCRIPT, str(scratch)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outputs = [racer.communicate(timeout=240) for racer in racers]
    for racer, (out, err) in zip(racers, outputs, strict=True):
        assert racer.returncode == 0, err
        assert out.strip() == "42"
    assert [p.name.startswith("pg") for p in cache.iterdir()] == [True]
    assert [p for p in scratch.iterdir() if p.name.startswith("pgtopo-")] == []


def test_start_failure_carries_conf_and_log(backend: LocalBackend) -> None:
    with pytest.raises(ServerStartError) as info:
        backend.start_postgres("broken", settings={"shared_buffers": "lots"})
    message = str(info.value)
    assert "shared_buffers = 'lots'" in message, "the error shows the conf it started with"
    assert 'invalid value for parameter "shared_buffers"' in message, "and the server's own log"
    assert not list(backend.workspace.path.glob("broken*")), "and leaves no files behind"


def test_explicit_bindir_without_binaries_is_explained(scratch: Path) -> None:
    with pytest.raises(
        BinaryNotFoundError, match=r"--pgtopo-pg-bindir is .* which has no postgres and initdb"
    ):
        binaries_module.find_pg_binaries(scratch, "--pgtopo-pg-bindir")


def test_no_binaries_anywhere_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(binaries_module, "_candidates", lambda explicit, source: iter([]))
    with pytest.raises(BinaryNotFoundError) as info:
        binaries_module.find_pg_binaries(None)
    message = str(info.value)
    assert "apt-get install postgresql" in message
    assert "brew install" in message
    assert "--pgtopo-pg-bindir" in message


def test_missing_binaries_fail_the_fixture_not_the_session(
    inner: pytest.Pytester, scratch: Path
) -> None:
    inner.makepyfile(
        """
        def test_uses_server(pg_plain): pass
        def test_plain(): pass
        """
    )
    result = inner.runpytest(f"--pgtopo-pg-bindir={scratch}")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        ["*BinaryNotFoundError: --pgtopo-pg-bindir is * which has no postgres and initdb*"]
    )


def test_cache_location_follows_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGTOPO_CACHE_DIR", "/somewhere/else")
    assert default_cache_root() == Path("/somewhere/else")
    monkeypatch.delenv("PGTOPO_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", "/xdg")
    assert default_cache_root() == Path("/xdg/pytest-pgtopo")
