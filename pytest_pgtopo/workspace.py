"""The one temporary directory a pytest process keeps its servers' data, sockets and logs in.

It lives on tmpfs (/dev/shm) when there is room: PostgreSQL creates hundreds of files per
CREATE DATABASE, and on an ext4 root disk that cost 3-10x more than on tmpfs (measured on
Debian 12: 16-350 ms against a steady 13-15 ms).
Its name carries the owning pid, so a later run can sweep what a killed run left behind.
Before it is made, its root is checked (`check_root`): a root that cannot work is refused with
the check that failed and the fix, not a raw OSError or a server's "Permission denied" later.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import stat
from pathlib import Path

from .errors import PgtopoError
from .runners.host import command_line
from .runners.local import OsUser, chown_tree
from .servers.watchdog import alive, watchdog

_PREFIX = "pgtopo-"
_KEPT_PREFIX = "pgtopo-kept-"
MIN_FREE = 128 << 20
"""Free space a workspace's root needs at start-up (128 MiB): each server starts from a copy of
the cached initdb cluster (~40 MB), its per-test databases take ~8 MB each while they live, and
a first run's initdb stages one more cluster there. Topologies with several servers need more."""
_CHANNELS = "--pgtopo-tmpdir (ini pgtopo_tmpdir, env PGTOPO_TMPDIR)"


class Workspace:
    """A private directory, owned by the server user, removed in `remove()`.

    `source` says where `root` came from (--pgtopo-tmpdir, ini pgtopo_tmpdir, env
    PGTOPO_TMPDIR, or default), for the message when the root cannot work.
    """

    def __init__(self, root: Path, user: OsUser, *, keep: bool, source: str = "default") -> None:
        sweep_stale(root)  # First: a dead run's files may be what fills the root.
        check_root(root, user, source)
        prefix = _KEPT_PREFIX if keep else f"{_PREFIX}{os.getpid()}-"
        self.path = root / f"{prefix}{secrets.token_hex(4)}"
        self.keep = keep
        if not keep:  # Before mkdir: an interrupt right after it still leaves nothing behind.
            watchdog().register_directory(self.path)
        try:
            self.path.mkdir(mode=0o700)
        except OSError as exc:  # What the checks cannot foresee (a quota, a race).
            raise PgtopoError(
                f"{_named(root, source)}: cannot create {self.path}: {exc.strerror}; "
                f"choose another directory with {_CHANNELS}"
            ) from None
        self.user = user
        chown_tree(self.path, user)

    def subdir(self, name: str) -> Path:
        """A fresh directory for one server, owned by the server user; `name-2` if `name` exists."""
        path, n = self.path / name, 1
        while path.exists():
            n += 1
            path = self.path / f"{name}-{n}"
        path.mkdir(mode=0o700)
        chown_tree(path, self.user)
        return path

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        if not self.keep:
            watchdog().unregister_directory(self.path)


def check_root(root: Path, user: OsUser, source: str = "default") -> None:
    """Refuse a root the servers cannot use, saying which check failed and how to fix it: it
    must be a writable directory on a writable filesystem with MIN_FREE bytes free, and the
    server's OS user must be able to enter it and every directory above it."""
    named = _named(root, source)
    fix = f"choose another directory with {_CHANNELS}"
    if not root.is_dir():
        raise PgtopoError(f"{named} is not a directory; create it or {fix}")
    if os.statvfs(root).f_flag & os.ST_RDONLY:
        raise PgtopoError(f"{named} is on a read-only file system; {fix}")
    if not os.access(root, os.W_OK | os.X_OK):
        raise PgtopoError(f"{named} is not writable by this process ({_mode(root)}); {fix}")
    free = shutil.disk_usage(root).free
    if free < MIN_FREE:
        raise PgtopoError(
            f"{named} has {free / (1 << 20):.1f} MiB free; a server needs at least "
            f"{MIN_FREE >> 20} MiB there (a ~40 MB copy of the initdb cluster, plus per-test "
            f"databases); free some space or {fix}"
        )
    blocked = _first_closed(root, user)
    if blocked is not None:
        way = f", on the way to {root}" if blocked != root else ""
        why = "" if user.is_current else f" (servers run as {user.name}: PostgreSQL refuses root)"
        raise PgtopoError(
            f"{named}: the server's OS user {user.name} cannot enter {blocked} "
            f"({_mode(blocked)}){way}{why}. Fix: chmod o+x {blocked}, or choose a directory "
            f"every user can enter (/dev/shm, /tmp) with {_CHANNELS}"
        )


def _named(root: Path, source: str) -> str:
    return f"the default temp dir {root}" if source == "default" else f"{source}={root}"


def _mode(path: Path) -> str:
    st = path.stat()
    try:
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = str(st.st_uid)
    return f"mode {stat.S_IMODE(st.st_mode):04o}, owner {owner}"


def _first_closed(root: Path, user: OsUser) -> Path | None:
    """The first directory from / down to `root` (symlinks followed, as the kernel does) that
    `user` may not enter, or None. Servers run with their primary group only (no extra groups)."""
    if user.is_current:
        closed = [p for p in _chain(root) if not os.access(p, os.X_OK)]
        return closed[0] if closed else None
    for path in _chain(root):
        st = path.stat()
        shift = 6 if st.st_uid == user.uid else 3 if st.st_gid == user.gid else 0
        if not (st.st_mode >> shift) & stat.S_IXOTH:
            return path
    return None


def _chain(root: Path) -> list[Path]:
    """Every directory from / down to `root`, as written and as resolved."""
    chain: list[Path] = []
    for path in (Path(os.path.abspath(root)), root.resolve()):
        chain += [p for p in [*reversed(path.parents), path] if p not in chain]
    return chain


def sweep_stale(root: Path) -> None:
    """Remove workspaces whose pytest process no longer exists (it was killed with SIGKILL)."""
    for entry in root.glob(f"{_PREFIX}*-*"):
        if entry.name.startswith(_KEPT_PREFIX):
            continue
        pid_text = entry.name[len(_PREFIX) :].split("-", 1)[0]
        if pid_text.isdigit() and not alive(int(pid_text)):
            _kill_leftover_servers(entry)  # A run killed before its watchdog could act.
            shutil.rmtree(entry, ignore_errors=True)


def _kill_leftover_servers(workspace: Path) -> None:
    """SIGKILL the servers a dead run left in `workspace`: the pids in their pid files, if that
    process still runs from this workspace (a reused pid belongs to someone else)."""
    pid_files = [*workspace.glob("*/data/postmaster.pid"), *workspace.glob("*/pgbouncer.pid")]
    for pid_file in pid_files:
        try:
            pid = int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        command = command_line(pid)
        # Gone already, or not provably ours (a reused pid is someone else's): leave it alone.
        if command is not None and str(workspace) in command:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
