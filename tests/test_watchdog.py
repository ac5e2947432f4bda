"""The watchdog: however pytest dies, every server it started is gone within seconds.

Real pytest subprocesses are killed with SIGKILL: in the foreground, as a background job of a
script (SIGINT and SIGQUIT arrive ignored, which PgBouncer before 1.23 does not override), and
as an xdist controller whose workers live on for a while. The assertions are on processes and
directories; waits are bounded, never fixed sleeps.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from .support import wait_for

WITHIN = 5.0  # Seconds in which a killed run's servers and files must be gone.

HOLD = """
import json, os, time
from pathlib import Path

def _hold(*topologies):
    pids = [pid for topology in topologies for pid in topology.pids()]
    name = os.environ.get("PYTEST_XDIST_WORKER", "main")
    Path(f"started-{name}.json").write_text(json.dumps(pids))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        time.sleep(0.05)
"""

ONE_TEST = (
    HOLD
    + """
def test_holds(pg_bouncer, pg_plain):
    _hold(pg_bouncer, pg_plain)
"""
)

TWO_TESTS = (
    HOLD
    + """
def test_one(pg_plain):
    _hold(pg_plain)

def test_two(pg_plain):
    _hold(pg_plain)
"""
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"


def _spawn(
    inner: pytest.Pytester, scratch: Path, *args: str, preexec: Callable[[], None] | None = None
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "pytest_pgtopo", "-q", *args],
        cwd=inner.path,
        env={**os.environ, "PGTOPO_TMPDIR": str(scratch)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=preexec,
    )


def _as_background_job() -> None:
    # What `pytest &` in a non-interactive shell inherits: SIGINT and SIGQUIT ignored.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGQUIT, signal.SIG_IGN)


def _started(inner: pytest.Pytester, count: int) -> list[int]:
    def files() -> list[Path]:
        return sorted(inner.path.glob("started-*.json"))

    wait_for(lambda: len(files()) >= count, f"{count} test(s) to hold their servers", 120)
    return [pid for path in files() for pid in json.loads(path.read_text())]


def _kill_and_time(proc: subprocess.Popen[bytes], pids: list[int], scratch: Path) -> float:
    assert pids
    assert all(_alive(pid) for pid in pids)
    start = time.monotonic()
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    wait_for(lambda: not any(_alive(pid) for pid in pids), "every server to be gone", 60)
    wait_for(lambda: not list(scratch.iterdir()), "the workspace to be gone", 60)
    return time.monotonic() - start


# Inner conftests forcing the fallbacks of systems without prctl or /proc (macOS, the BSDs).
NO_PRCTL = "import pytest_pgtopo.runners.local as local\nlocal.parent_death_signal = lambda: None\n"
NO_PROC = (
    "import pytest_pgtopo.runners.host as host, pathlib\nhost.PROC = pathlib.Path('/nonexistent')\n"
)


@pytest.mark.parametrize("how", ["foreground", "background job", "without prctl"])
def test_kill_9_stops_postgres_and_pgbouncer_and_removes_the_workspace(
    inner: pytest.Pytester, scratch: Path, how: str
) -> None:
    if how == "without prctl":  # Only the watchdog, as on macOS.
        inner.makeconftest(NO_PRCTL)
    inner.makepyfile(ONE_TEST)
    proc = _spawn(inner, scratch, preexec=_as_background_job if how != "foreground" else None)
    try:
        pids = _started(inner, 1)
        assert len(pids) == 3, "PgBouncer, its server and pg_plain's server"
        assert _kill_and_time(proc, pids, scratch) < WITHIN
    finally:
        proc.kill()


def test_kill_9_of_an_xdist_controller_stops_its_workers_servers(
    inner: pytest.Pytester, scratch: Path
) -> None:
    pytest.importorskip("xdist", reason="pytest-xdist is needed to start an xdist controller")
    inner.makepyfile(TWO_TESTS)
    proc = _spawn(inner, scratch, "-n", "2")
    try:
        pids = _started(inner, 2)
        # The workers live on for a while after their controller; their servers must not.
        assert _kill_and_time(proc, pids, scratch) < WITHIN
    finally:
        proc.kill()


@pytest.mark.parametrize("lookup", ["/proc", "ps (no /proc)"])
def test_a_run_whose_watchdog_died_too_is_swept_processes_first(
    inner: pytest.Pytester, scratch: Path, lookup: str
) -> None:
    inner.makepyfile(ONE_TEST)
    proc = _spawn(inner, scratch, preexec=_as_background_job)
    try:
        pids = _started(inner, 1)
        watchdogs = _watchdogs_of(proc.pid)
        assert watchdogs, "the run started a watchdog"
        for pid in [proc.pid, *watchdogs]:
            os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    for path in inner.path.glob("started-*.json"):
        path.unlink()
    if lookup != "/proc":  # The next run tells its leftovers by `ps`, as on macOS.
        inner.makeconftest(NO_PROC)
    inner.makepyfile("def test_quick(pg_plain): pass")
    inner.runpytest_subprocess(f"--pgtopo-tmpdir={scratch}").assert_outcomes(passed=1)
    assert not any(_alive(pid) for pid in pids), "the next run stopped what the dead one left"
    assert list(scratch.iterdir()) == [], "and removed its workspace"


def _watchdogs_of(owner: int) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(a.endswith(b"watchdog.py") for a in args) and str(owner).encode() in args:
            found.append(int(proc.name))
    return found
