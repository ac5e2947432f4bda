"""What the benchmark scripts share: scratch space, timing, waiting for a login, report lines.

The scripts run as `python bench/<name>.py`, which puts bench/ first on sys.path, so they
`import common` as a plain module; bench/ is deliberately not a package.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import psycopg
from psycopg.rows import TupleRow

from pytest_pgtopo.backends.local import LocalBackend
from pytest_pgtopo.runners import local
from pytest_pgtopo.types import LOOPBACK

POLL_INTERVAL = 0.005
"""Seconds between two attempts when polling for a server (the "every 5 ms" of the README)."""
WAIT_LIMIT = 60.0
"""Seconds a bare server gets to come up (or a polled condition to become true)."""

Row = tuple[str, list[float]]
"""One line of a report table: its label and the samples in ms."""


# --- timing ----------------------------------------------------------------------------------


def ms_since(start: float) -> float:
    """Milliseconds elapsed since `start`, a time.perf_counter() reading."""
    return (time.perf_counter() - start) * 1000


def timed(fn: Callable[[], object]) -> float:
    """Call `fn` and return how long it took, in milliseconds."""
    start = time.perf_counter()
    fn()
    return ms_since(start)


# --- command line and scratch space ----------------------------------------------------------


def arg_parser(doc: str, *, repeat: int, repeat_help: str) -> argparse.ArgumentParser:
    """A parser described by the first line of the script's docstring, with the `--repeat` count
    every script takes (at least 1; `repeat` is its default)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--repeat", type=at_least_one, default=repeat, help=repeat_help)
    return parser


def at_least_one(text: str) -> int:
    """argparse `type` for counts: an integer, raised to 1 if smaller."""
    return max(1, int(text))


@contextmanager
def scratch_dir() -> Iterator[Path]:
    """A fresh directory in /dev/shm (mode 755, so the server user can reach into it), removed
    with everything in it on exit."""
    root = Path(tempfile.mkdtemp(prefix="pgtopo_bench-", dir="/dev/shm"))
    try:
        root.chmod(0o755)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def cache_dir(path: Path) -> Iterator[None]:
    """Point the initdb cache (PGTOPO_CACHE_DIR) at `path` for the duration, so the user's
    ~/.cache/pytest-pgtopo is left alone."""
    old = os.environ.get("PGTOPO_CACHE_DIR")
    os.environ["PGTOPO_CACHE_DIR"] = str(path)
    try:
        yield
    finally:
        if old is None:
            del os.environ["PGTOPO_CACHE_DIR"]
        else:
            os.environ["PGTOPO_CACHE_DIR"] = old


def local_backend(tmp_root: Path, pgbouncer_bin: Path | None = None) -> LocalBackend:
    """A LocalBackend with the default binaries (or this PgBouncer), its workspace under
    `tmp_root`, not kept."""
    return LocalBackend(tmp_root=tmp_root, pgbouncer_bin=pgbouncer_bin, keep=False)


# --- bare servers ----------------------------------------------------------------------------


def spawn_postgres(
    postgres: str,
    data: Path,
    port: int,
    *,
    user: local.OsUser,
    cwd: Path,
    log_path: Path,
    **settings: str,
) -> subprocess.Popen[bytes]:
    """Start `postgres -D data` as `user`, listening on LOOPBACK:`port` with its socket in
    `data`, plus any further `-c` settings."""
    every = {"port": port, "listen_addresses": LOOPBACK, "unix_socket_directories": data}
    options = [
        arg for name, value in {**every, **settings}.items() for arg in ("-c", f"{name}={value}")
    ]
    return local.spawn([postgres, "-D", str(data), *options], user=user, cwd=cwd, log_path=log_path)


def connect_when_up(
    process: subprocess.Popen[bytes],
    *,
    port: int,
    user: str,
    password: str,
    deadline: float,
    autocommit: bool = False,
) -> psycopg.Connection[TupleRow]:
    """psycopg.connect to database postgres on LOOPBACK:`port` every POLL_INTERVAL until it
    works; re-raises the last error once `process` has exited or perf_counter() is past
    `deadline`."""
    while True:
        try:
            return psycopg.connect(
                host=LOOPBACK,
                port=port,
                user=user,
                password=password,
                dbname="postgres",
                autocommit=autocommit,
            )
        except psycopg.OperationalError:
            if process.poll() is not None or time.perf_counter() > deadline:
                raise
            time.sleep(POLL_INTERVAL)


def ms_until_login(
    process: subprocess.Popen[bytes], start: float, *, port: int, user: str, password: str
) -> float:
    """Milliseconds from `start` (a perf_counter() reading) until a login works, polled as by
    connect_when_up with a deadline WAIT_LIMIT after `start`; the connection is closed again."""
    conn = connect_when_up(
        process, port=port, user=user, password=password, deadline=start + WAIT_LIMIT
    )
    elapsed = ms_since(start)
    conn.close()
    return elapsed


def stop_process(
    process: subprocess.Popen[bytes] | None, sig: signal.Signals, timeout: float
) -> None:
    """Send `sig` to `process` if it is still running and wait up to `timeout` s for it to exit."""
    if process is not None and process.poll() is None:
        process.send_signal(sig)
        process.wait(timeout)


# --- report ----------------------------------------------------------------------------------


def median_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    """The median of `numerator` over the median of `denominator`."""
    return statistics.median(numerator) / statistics.median(denominator)


def report(title: str, rows: Sequence[Row], digits: int = 1) -> None:
    """Print a table of median, min, max and count per row, `title` heading the label column."""
    width = max(len(name) for name in [title, *(name for name, _ in rows)])
    print(f"{title:<{width}}  {'median ms':>9}  {'min ms':>8}  {'max ms':>8}  {'n':>3}")
    for name, values in rows:
        print(
            f"{name:<{width}}  {statistics.median(values):9.{digits}f}  {min(values):8.{digits}f}"
            f"  {max(values):8.{digits}f}  {len(values):>3}"
        )


def verdict(label: str, ratio: float, op: Literal["<=", ">="], target: float) -> str:
    """A `RATIO` line that ends in OK or MISSED."""
    shown = round(ratio, 2)  # Judged as printed, so "0.90x (target >= 0.9x)" is never MISSED.
    ok = shown <= target if op == "<=" else shown >= target
    return f"RATIO {label}: {shown:.2f}x (target {op} {target:g}x) {'OK' if ok else 'MISSED'}"


def info(label: str, ratio: float, note: str = "") -> str:
    """A `RATIO` line with no target; `note` goes inside the parentheses after "info"."""
    return f"RATIO {label}: {ratio:.2f}x (info{note})"
