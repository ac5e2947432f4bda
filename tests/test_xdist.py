"""xdist: repeated -n 2 and -n 4 runs, and two concurrent runs of one suite, with zero failures.

Each worker runs its own servers (README, "xdist", says why); the schema's migration runs once
in all, because every other worker, and the concurrent run, waits for it and restores its dump.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("xdist", reason="pytest-xdist runs these suites")

CONFTEST = """
import time
import pytest
import sqlalchemy as sa
from pathlib import Path
from pytest_pgtopo import cached_schema

def migrate(engine):
    with Path(__file__).with_name("loads.log").open("a") as log:
        log.write("load\\n")
    time.sleep(1)  # A migration that takes a while: concurrent loaders would overlap.
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE items (id int PRIMARY KEY, label text)"))
        conn.execute(sa.text("INSERT INTO items VALUES (1, 'seed'), (2, 'seed')"))

@pytest.fixture(scope="session")
def pgtopo_schema():
    return cached_schema(migrate, key="rev-1")
"""

# Every test writes, so two tests sharing a database (or a stale template) would fail.
SUITE = """
import pytest
import sqlalchemy as sa

@pytest.mark.parametrize("n", range(12))
def test_direct(pg_sync_engine, n):
    with pg_sync_engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO items VALUES (:id, 'mine')"), {"id": 100 + n})
        assert conn.execute(sa.text("SELECT count(*) FROM items")).scalar() == 3

@pytest.mark.parametrize("n", range(6))
async def test_async(pg_engine, n):
    async with pg_engine.begin() as conn:
        await conn.execute(sa.text("INSERT INTO items VALUES (3, 'mine')"))
        assert (await conn.execute(sa.text("SELECT count(*) FROM items"))).scalar() == 3

@pytest.mark.parametrize("n", range(6))
def test_through_pgbouncer(pgbouncer_sync_engine, n):
    with pgbouncer_sync_engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO items VALUES (3, 'mine')"))
        assert conn.execute(sa.text("SELECT count(*) FROM items")).scalar() == 3
"""
TESTS = 24


@pytest.fixture
def suite(tmp_path: Path) -> Path:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_suite.py").write_text(SUITE)
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
    )
    return tmp_path


def _start(suite: Path, workers: int, cache: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGTOPO_")}
    command = [sys.executable, "-m", "pytest", "-p", "pytest_pgtopo", "-p", "no:cacheprovider",
               "-q", "-n", str(workers), f"--pgtopo-schema-cache-dir={cache}"]  # fmt: skip
    return subprocess.Popen(command, cwd=suite, env=env, stdout=subprocess.PIPE, text=True)


def _passed(run: subprocess.Popen[str]) -> None:
    output = run.communicate(timeout=600)[0]
    assert run.returncode == 0, output
    assert f"{TESTS} passed" in output, output


def _loads(suite: Path) -> int:
    return len((suite / "loads.log").read_text().splitlines())


@pytest.mark.parametrize("workers", [2, 4])
def test_repeated_runs_have_zero_failures(suite: Path, scratch: Path, workers: int) -> None:
    for _ in range(3):
        _passed(_start(suite, workers, scratch))
    assert _loads(suite) == 1, "the migration ran once; every other worker restored it"


def test_two_concurrent_runs_of_one_suite(suite: Path, scratch: Path) -> None:
    runs = [_start(suite, 2, scratch) for _ in range(2)]
    for run in runs:
        _passed(run)
    assert _loads(suite) == 1, "two runs, four workers: one migration"
