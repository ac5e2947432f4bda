"""A run leaves no server process and no temp directory behind: on failure, Ctrl-C, or kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from .support import wait_for

SLOW_TEST = """
import time
from pathlib import Path
import sqlalchemy as sa

def test_waits_to_be_interrupted(pg_sync_engine):
    with pg_sync_engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))
    Path("started").write_text("yes")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        time.sleep(0.05)
"""


def _servers_using(path: Path) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(path) in cmdline and "postgres" in cmdline:
            found.append(f"{proc.name}: {cmdline}")
    return found


def _spawn_pytest(inner: pytest.Pytester, scratch: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PGTOPO_TMPDIR": str(scratch)}
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "pytest_pgtopo", "-q"],
        cwd=inner.path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def test_failing_run_leaves_nothing_behind(inner: pytest.Pytester, scratch: Path) -> None:
    inner.makepyfile(
        """
        import sqlalchemy as sa

        def test_fails(pg_sync_engine):
            with pg_sync_engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
            assert False

        async def test_errors_in_body(pg_engine):
            raise RuntimeError("boom")
        """
    )
    result = inner.runpytest_subprocess(f"--pgtopo-tmpdir={scratch}")
    result.assert_outcomes(failed=2)
    assert list(scratch.iterdir()) == []
    assert _servers_using(scratch) == []


def test_ctrl_c_leaves_nothing_behind(inner: pytest.Pytester, scratch: Path) -> None:
    inner.makepyfile(SLOW_TEST)
    proc = _spawn_pytest(inner, scratch)
    try:
        wait_for(lambda: (inner.path / "started").exists(), "the test to start", 120)
        assert _servers_using(scratch), "a server should be running mid-test"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert b"KeyboardInterrupt" in out
    assert _servers_using(scratch) == []
    assert list(scratch.iterdir()) == []


def test_kill_9_takes_the_servers_down_and_the_files_away(
    inner: pytest.Pytester, scratch: Path
) -> None:
    inner.makepyfile(SLOW_TEST)
    proc = _spawn_pytest(inner, scratch)
    try:
        wait_for(lambda: (inner.path / "started").exists(), "the test to start", 120)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    # The run's watchdog stops the servers and removes the workspace (test_watchdog.py times it).
    wait_for(lambda: not _servers_using(scratch), "the orphaned server to exit", 60)
    wait_for(lambda: not list(scratch.iterdir()), "the killed run's workspace to go", 60)
