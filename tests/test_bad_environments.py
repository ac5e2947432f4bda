"""A temp dir or a binary that cannot work is reported at once, naming the check, the channel
it came from and the fix: not a raw OSError, a 260 KB shutil.Error or a server's own log.

The filesystems are real: a 1 MiB tmpfs and a read-only bind mount, mounted here (root only).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_pgtopo.errors import BinaryNotFoundError
from pytest_pgtopo.servers.pgbouncer import find_pgbouncer

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="mounts filesystems and runs servers as another user: needs root"
)

A_TOPOLOGY = "def test_needs_a_server(pg_plain):\n    pass\n"


@contextlib.contextmanager
def mounted(target: Path, *how: str) -> Iterator[Path]:
    """`mount <how...> <target>`, unmounted on the way out whatever happened."""
    subprocess.run(["mount", *how, str(target)], check=True, capture_output=True)
    try:
        yield target
    finally:
        subprocess.run(["umount", str(target)], check=True, capture_output=True)


def _setup_error(result: pytest.RunResult) -> str:
    result.assert_outcomes(errors=1)
    return result.stdout.str()


def _open_dir(parent: Path, name: str) -> Path:
    path = parent / name
    path.mkdir()
    path.chmod(0o755)
    return path


@needs_root
def test_a_full_tmpdir_is_refused_before_anything_is_copied(
    inner: pytest.Pytester, scratch: Path
) -> None:
    target = _open_dir(scratch, "full")
    inner.makepyfile(A_TOPOLOGY)
    with mounted(target, "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs"):
        output = _setup_error(inner.runpytest(f"--pgtopo-tmpdir={target}"))
        assert list(target.iterdir()) == [], "nothing left behind"
    assert f"--pgtopo-tmpdir={target}" in output
    assert "MiB free; a server needs at least 128 MiB there" in output
    assert "(ini pgtopo_tmpdir, env PGTOPO_TMPDIR)" in output  # Every channel to fix it with.
    assert "shutil.Error" not in output
    assert "No space left on device" not in output
    assert len(output) < 20_000, f"a {len(output)}-character report for one full disk"


@needs_root
def test_a_read_only_tmpdir_names_the_env_variable_it_came_from(
    inner: pytest.Pytester, scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = _open_dir(scratch, "read-only")
    inner.makepyfile(A_TOPOLOGY)
    monkeypatch.setenv("PGTOPO_TMPDIR", str(target))
    with mounted(target, "--bind", str(target)):
        subprocess.run(["mount", "-o", "remount,bind,ro", str(target)], check=True)
        output = _setup_error(inner.runpytest())
    assert f"env PGTOPO_TMPDIR={target}" in output
    assert "is on a read-only file system" in output
    assert "--pgtopo-tmpdir" in output  # How to choose another one.
    assert "OSError" not in output
    assert "Errno" not in output


@needs_root
def test_a_private_root_owned_tmpdir_is_refused_before_the_server_is_denied(
    inner: pytest.Pytester, scratch: Path
) -> None:
    private = Path(tempfile.mkdtemp(dir=scratch))  # 0700 root, as `mktemp -d` makes it.
    inner.makepyfile(A_TOPOLOGY)
    output = _setup_error(inner.runpytest(f"--pgtopo-tmpdir={private}"))
    assert f"--pgtopo-tmpdir={private}" in output
    assert f"OS user postgres cannot enter {private} (mode 0700, owner root)" in output
    assert f"chmod o+x {private}" in output
    assert "Permission denied" not in output
    assert list(private.iterdir()) == [], "nothing left behind"


@needs_root
def test_a_private_parent_directory_is_named(inner: pytest.Pytester, scratch: Path) -> None:
    private = Path(tempfile.mkdtemp(dir=scratch))
    target = _open_dir(private, "open-itself")
    inner.makepyfile(A_TOPOLOGY)
    output = _setup_error(inner.runpytest(f"--pgtopo-tmpdir={target}"))
    assert f"OS user postgres cannot enter {private} (mode 0700, owner root)" in output
    assert f"on the way to {target}" in output


def test_a_pgbouncer_option_that_does_not_run_names_the_option_and_the_fix(
    inner: pytest.Pytester, scratch: Path
) -> None:
    inner.makepyfile("def test_pooled(pg_bouncer):\n    pass\n")
    result = inner.runpytest("--pgtopo-pgbouncer-bin=/bin/false", f"--pgtopo-tmpdir={scratch}")
    output = _setup_error(result)
    assert "--pgtopo-pgbouncer-bin=/bin/false does not run as pgbouncer" in output
    assert "`/bin/false --version` exited with status 1" in output
    assert "ini pgtopo_pgbouncer_bin, env PGTOPO_PGBOUNCER_BIN" in output
    assert "apt-get install pgbouncer" in output
    assert "pgtopo log:" not in output, "no server may start for a PgBouncer that cannot run"


def test_a_pgbouncer_from_the_env_variable_is_named_so(
    inner: pytest.Pytester, scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PGTOPO_PGBOUNCER_BIN", "/bin/true")
    inner.makepyfile("def test_pooled(pg_bouncer):\n    pass\n")
    output = _setup_error(inner.runpytest(f"--pgtopo-tmpdir={scratch}"))
    assert "env PGTOPO_PGBOUNCER_BIN=/bin/true does not run as pgbouncer" in output
    assert "printed no PgBouncer version" in output


def test_a_broken_pgbouncer_on_path_says_it_was_found_on_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "pgbouncer").symlink_to("/bin/false")
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("PGTOPO_PGBOUNCER_BIN", raising=False)
    with pytest.raises(BinaryNotFoundError) as caught:
        find_pgbouncer(None)
    message = str(caught.value)
    assert f"pgbouncer found on PATH ({tmp_path / 'pgbouncer'}) does not run" in message
    assert "--pgtopo-pgbouncer-bin" in message  # How to point past it.
