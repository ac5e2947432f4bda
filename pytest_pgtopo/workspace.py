"""The one temporary directory a pytest process keeps its servers' data, sockets and logs in.

It lives on tmpfs (/dev/shm) when there is room: PostgreSQL creates hundreds of files per
CREATE DATABASE, and on an ext4 root disk that cost 3-10x more than on tmpfs (measured on
Debian 12: 16-350 ms against a steady 13-15 ms).
Its name carries the owning pid, so a later run can sweep what a killed run left behind.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from pathlib import Path

from .runners.local import OsUser, chown_tree

_PREFIX = "pgtopo-"
_KEPT_PREFIX = "pgtopo-kept-"
_MIN_TMPFS_FREE = 1 << 30  # Docker's default 64 MB /dev/shm is too small for a server or two.


def default_root() -> Path:
    """/dev/shm when it is a writable tmpfs with at least 1 GiB free, else the system temp dir."""
    shm = Path("/dev/shm")
    try:
        usage = shutil.disk_usage(shm)
        if os.access(shm, os.W_OK) and usage.free >= _MIN_TMPFS_FREE:
            return shm
    except OSError:
        pass
    return Path(tempfile.gettempdir())


class Workspace:
    """A private directory, owned by the server user, removed in `remove()`."""

    def __init__(self, root: Path, user: OsUser, *, keep: bool) -> None:
        sweep_stale(root)
        prefix = _KEPT_PREFIX if keep else f"{_PREFIX}{os.getpid()}-"
        self.path = root / f"{prefix}{secrets.token_hex(4)}"
        self.path.mkdir(mode=0o700)
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


def sweep_stale(root: Path) -> None:
    """Remove workspaces whose pytest process no longer exists (it was killed with SIGKILL)."""
    for entry in root.glob(f"{_PREFIX}*-*"):
        if entry.name.startswith(_KEPT_PREFIX):
            continue
        pid_text = entry.name[len(_PREFIX) :].split("-", 1)[0]
        if pid_text.isdigit() and not _alive(int(pid_text)):
            shutil.rmtree(entry, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
