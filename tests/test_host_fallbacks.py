"""The local backend where Linux's conveniences do not exist (macOS, the BSDs), tested on Linux
by forcing each fallback: no prctl, no /proc, no /dev/shm, and not root."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from pytest_pgtopo.backends.local import LocalBackend
from pytest_pgtopo.runners import host

NOWHERE = Path("/nonexistent-pgtopo-fallback")

# Every Linux-only part switched off, as the inner run's conftest: the run is shaped like macOS.
LIKE_MACOS = f"""
from pathlib import Path
import pytest_pgtopo.runners.host as host
import pytest_pgtopo.runners.local as local

host.PROC = Path({str(NOWHERE)!r})
host.SHM = Path({str(NOWHERE)!r})
local.parent_death_signal = lambda: None
"""

CHECKS = """
import os, tempfile
from pathlib import Path

def test_servers_run_as_me_outside_dev_shm(pg_plain, pg_bouncer, pg_sync_engine):
    with pg_sync_engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT 1").scalar() == 1
    data = Path(pg_plain.server.admin.scalar("SHOW data_directory"))
    assert data.is_relative_to(tempfile.gettempdir()), data
    assert data.stat().st_uid == os.geteuid()
    for pid in pg_plain.pids() + pg_bouncer.pids():
        assert Path(f"/proc/{pid}").stat().st_uid == os.geteuid()
"""


def test_no_parent_death_signal_off_linux() -> None:
    assert host.parent_death_signal("darwin") is None
    assert host.parent_death_signal("freebsd14") is None
    assert callable(host.parent_death_signal("linux"))


def test_command_line_without_proc_asks_ps() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()", "marker-arg"],
                             stdin=subprocess.PIPE)  # fmt: skip
    try:
        from_proc = host.command_line(child.pid)
        from_ps = host.command_line(child.pid, proc=NOWHERE)
        assert str(from_proc).endswith("marker-arg")
        assert str(from_ps).endswith("marker-arg")
    finally:
        child.communicate(b"")
    assert host.command_line(child.pid, proc=NOWHERE) is None  # Reaped: gone for ps too.
    assert host.command_line(child.pid) is None


def test_default_root_without_dev_shm_is_the_temp_dir() -> None:
    assert host.default_root(shm=NOWHERE) == Path(tempfile.gettempdir())


def test_a_server_without_parent_death_signal_in_the_temp_dir(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("pytest_pgtopo.runners.local.parent_death_signal", lambda: None)
    root = host.default_root(shm=NOWHERE)
    backend = LocalBackend(pg_bindir=None, pg_bindir_source="default", tmp_root=root, keep=False)
    try:
        server = backend.start_postgres("fallback")
        assert server.admin.scalar("SELECT 1") == 1
        data = Path(server.admin.scalar("SHOW data_directory"))
        assert data.is_relative_to(root)
        server.stop()
        assert not server.is_running()
    finally:
        backend.close()
    assert not data.exists()


def _interpreter_for(user: str) -> str | None:
    """A Python of this minor version that `user` can run (the test's own may live under a
    0700 home), to run this checkout's packages as that user."""
    candidate = f"/usr/bin/python{sys.version_info[0]}.{sys.version_info[1]}"
    # The probe starts a child the way the watchdog does: by sys.executable.
    probe = subprocess.run(
        ["setpriv", f"--reuid={user}", "--regid=nogroup", "--clear-groups", candidate, "-c",
         "import subprocess, sys; subprocess.run([sys.executable, '-c', ''], check=True)"],
        capture_output=True, text=True,
    )  # fmt: skip
    return candidate if probe.returncode == 0 else None


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the inner pytest as another user")
@pytest.mark.skipif(
    shutil.which("setpriv") is None or shutil.which("unshare") is None,
    reason="needs setpriv and unshare (util-linux)",
)
def test_a_run_shaped_like_macos_not_root_no_proc_no_shm_no_prctl(scratch: Path) -> None:
    python = _interpreter_for("nobody")
    if python is None:
        pytest.skip(
            f"no Python {sys.version_info[0]}.{sys.version_info[1]} that user nobody can execute "
            f"(the test's own, {sys.executable}, may sit under a 0700 home; "
            f"/usr/bin/python{sys.version_info[0]}.{sys.version_info[1]} does not run as nobody)"
        )
    suite = scratch / "suite"
    suite.mkdir(mode=0o777)
    (suite / "conftest.py").write_text(LIKE_MACOS)
    (suite / "test_checks.py").write_text(CHECKS)
    (suite / "pytest.ini").write_text("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    scratch.chmod(0o777)
    # This checkout and its packages may sit where nobody cannot read (a clone in a 0700 mktemp
    # directory, as CI makes): in a private mount namespace, each is bind-mounted into a 0755
    # directory of the scratch area, and the inner run imports them from there. The root of a
    # bind mount keeps its mode, so the package directory is bound, not the (0700) checkout.
    package = Path(__file__).parents[1] / "pytest_pgtopo"
    shim = scratch / "shim"
    paths = [shim / "checkout"]
    binds = {package: shim / "checkout" / "pytest_pgtopo"}
    for n, site in enumerate(p for p in sys.path if p.endswith("site-packages")):
        paths.append(shim / f"site{n}")
        binds[Path(site)] = shim / f"site{n}"
    for target in [shim, *paths, *binds.values()]:
        target.mkdir(parents=True, exist_ok=True)
        target.chmod(0o755)
    mounts = " && ".join(
        f"mount --bind {shlex.quote(str(src))} {shlex.quote(str(dst))}"
        for src, dst in binds.items()
    )
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(scratch),
        "PGTOPO_CACHE_DIR": str(scratch / "cache"),
        "PYTHONPATH": os.pathsep.join(map(str, paths)),
    }
    before = set(Path(tempfile.gettempdir()).glob("pgtopo-*"))
    result = subprocess.run(
        ["unshare", "--mount", "sh", "-c", f'{mounts} && exec "$@"', "sh",
         "setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", python, "-m",
         "pytest", "-p", "pytest_pgtopo", "-p", "no:cacheprovider", "-q", str(suite)],
        cwd=suite, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
    assert set(Path(tempfile.gettempdir()).glob("pgtopo-*")) == before, "the workspace is gone"
