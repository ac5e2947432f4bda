"""A run killed with `kill -9` leaves its databases on an external server; a later run sweeps
them, and never touches those of a run that is still alive.

The "external" server is this session's own pg_plain; the inner runs are real pytest processes.
"""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from pytest_pgtopo.databases import live_runs
from pytest_pgtopo.session import PgtopoSession
from pytest_pgtopo.topologies.plain import PlainTopology

from .support import wait_for

SCHEMA = """
import pytest
import sqlalchemy as sa

metadata = sa.MetaData()
sa.Table("items", metadata, sa.Column("id", sa.Integer, primary_key=True))

@pytest.fixture(scope="session")
def pgtopo_schema():
    return metadata
"""

# Writes its run's token, then waits for a release file (bounded) while holding its database.
HOLDS = """
import time
from pathlib import Path
import sqlalchemy as sa

def test_holds_its_database(pg_sync_engine, pg_plain, pgtopo_session):
    with pg_sync_engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO items VALUES (1)"))
    Path("{name}.started").write_text(pgtopo_session.databases(pg_plain).token)
    deadline = time.monotonic() + 120
    while not Path("{name}.release").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert Path("{name}.release").exists(), "never released"
"""

QUICK = """
def test_quick(pg_sync_engine):
    pass
"""


def test_a_later_run_sweeps_a_killed_runs_databases_but_not_a_live_ones(
    inner: pytest.Pytester, pg_plain: PlainTopology, pgtopo_session: PgtopoSession
) -> None:
    admin = pg_plain.server.admin
    external = ["--pgtopo-backend=external", f"--pgtopo-external-url={pg_plain.primary.describe()}"]
    inner.makeconftest(SCHEMA)
    inner.makepyfile(
        test_killed=HOLDS.format(name="killed"),
        test_alive=HOLDS.format(name="alive"),
        test_later=QUICK,
    )

    def spawn(test_file: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "pytest", "-p", "pytest_pgtopo", "-q", test_file, *external],
            cwd=inner.path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )

    def databases_of(token: str) -> list[str]:
        # Not the clone made ahead for a next test (`_next`): it may or may not exist yet.
        rows = admin.rows(
            "SELECT datname FROM pg_database "
            f"WHERE datname ~ '^pgtopo_(template_|shared_)?{token}_' "
            "AND datname !~ '_next$' ORDER BY datname"
        )
        return [str(row["datname"]) for row in rows]

    killed = spawn("test_killed.py")
    alive = spawn("test_alive.py")
    try:
        started = inner.path / "killed.started"
        wait_for(started.exists, "the run to be killed to start its test", 120)
        killed_token = started.read_text()
        killed_databases = databases_of(killed_token)
        assert len(killed_databases) == 2, killed_databases  # Its template and its test's.

        # A run that starts while the other is alive leaves its databases alone.
        started = inner.path / "alive.started"
        wait_for(started.exists, "the concurrent run to start its test", 120)
        alive_token = started.read_text()
        alive_databases = databases_of(alive_token)
        assert len(alive_databases) == 2, alive_databases
        assert databases_of(killed_token) == killed_databases

        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=60)
        # The server ends the killed run's sessions, and with them the lock that marks it alive.
        wait_for(lambda: killed_token not in live_runs(admin), "the killed run's lock to go", 30)
        assert databases_of(killed_token) == killed_databases, "nothing sweeps before a run starts"

        later = inner.runpytest_subprocess("test_later.py", *external)
        later.assert_outcomes(passed=1)
        assert databases_of(killed_token) == [], "the later run sweeps the killed run's databases"
        every = f"SELECT count(*) FROM pg_database WHERE datname ~ '^pgtopo_.*{killed_token}'"
        assert admin.scalar(every) == 0, "its clone made ahead too"
        assert databases_of(alive_token) == alive_databases, "a live run's databases stay"
        assert alive_token in live_runs(admin)

        (inner.path / "alive.release").write_text("go")
        out, _ = alive.communicate(timeout=120)
        assert b"1 passed" in out, out.decode()
        assert databases_of(alive_token) == []
        left = f"SELECT count(*) FROM pg_database WHERE datname ~ '^pgtopo_.*{alive_token}'"
        assert admin.scalar(left) == 0, "a run that ends drops its clone made ahead"
    finally:
        for proc in (killed, alive):
            proc.kill()
            proc.wait(timeout=60)
    # The session's own databases on the same server were never the sweep's business.
    own = pgtopo_session.databases(pg_plain).token
    assert own in live_runs(admin)


def test_a_kept_database_is_not_swept(inner: pytest.Pytester, pg_plain: PlainTopology) -> None:
    # --pgtopo-keep leaves a failed test's database for a person to look at: a later run on the
    # same server must leave it there too.
    url = pg_plain.primary.describe()
    external = ["--pgtopo-backend=external", f"--pgtopo-external-url={url}"]
    inner.makepyfile(
        test_fails="""
        def test_fails(pg_plain_database):
            assert False, "keep my database"
        """,
        test_later=QUICK,
    )
    first = inner.runpytest_subprocess("test_fails.py", "--pgtopo-keep", *external)
    first.assert_outcomes(failed=1)
    kept = [
        line.rsplit("/", 1)[1]
        for line in first.stdout.lines
        if line.startswith("kept database of failed")
    ]
    assert len(kept) == 1, first.stdout.str()
    exists = f"SELECT count(*) FROM pg_database WHERE datname = '{kept[0]}'"
    try:
        assert pg_plain.server.admin.scalar(exists) == 1
        inner.runpytest_subprocess("test_later.py", *external).assert_outcomes(passed=1)
        assert pg_plain.server.admin.scalar(exists) == 1
    finally:
        pg_plain.server.admin.execute(f'DROP DATABASE IF EXISTS "{kept[0]}" WITH (FORCE)')
