"""What differs between the systems the local backend runs on, each part small and named.

Linux has /proc, prctl and a tmpfs at /dev/shm; macOS and the BSDs have none of them. Each
function here takes the thing it looks for as a parameter, so the tests force every fallback
on Linux (CI cannot run macOS): `parent_death_signal("darwin")`, `command_line(pid,
proc=<no such dir>)`, `default_root(shm=<no such dir>)`.
"""

from __future__ import annotations

import ctypes
import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

PROC = Path("/proc")
SHM = Path("/dev/shm")
MIN_TMPFS_FREE = 1 << 30  # Docker's default 64 MB /dev/shm is too small for a server or two.
_PR_SET_PDEATHSIG = 1


@functools.cache
def parent_death_signal(platform: str = sys.platform) -> Callable[[], None] | None:
    """The preexec_fn that has the kernel send SIGQUIT to a server when pytest dies (kill -9
    included), or None where there is no such thing.

    Linux only: prctl(PR_SET_PDEATHSIG) does not exist on macOS or the BSDs, where ctypes finds
    no `prctl` symbol (AttributeError) and every spawn would fail. There the watchdog alone
    stops a killed run's servers (it does everywhere; this signal is a second line on Linux).
    The symbol is looked up here, in the parent, once: the child only makes the call.

    >>> parent_death_signal("darwin") is None
    True
    """
    if not platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except AttributeError:  # A libc without it: run without the signal rather than not at all.
        return None

    def die_with_parent() -> None:
        # Runs in the child after its uid changed, so the signal survives the switch.
        prctl(_PR_SET_PDEATHSIG, signal.SIGQUIT)

    return die_with_parent


def command_line(pid: int, proc: Path | None = None) -> str | None:
    """The command line of process `pid` (arguments joined by spaces): from /proc where there
    is one, else from `ps` (macOS, the BSDs); None when the process is gone or cannot be seen."""
    proc = PROC if proc is None else proc
    if proc.is_dir():
        try:
            raw = (proc / str(pid) / "cmdline").read_bytes()
        except OSError:
            return None
        return raw.replace(b"\0", b" ").decode(errors="replace").strip() or None
    try:
        result = subprocess.run(
            ["ps", "-ww", "-o", "command=", "-p", str(pid)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def default_root(shm: Path | None = None) -> Path:
    """`shm` (/dev/shm) when it is a writable tmpfs with at least 1 GiB free, else the system
    temp dir (macOS has no /dev/shm; Docker's is 64 MB)."""
    shm = SHM if shm is None else shm
    try:
        usage = shutil.disk_usage(shm)
        if os.access(shm, os.W_OK) and usage.free >= MIN_TMPFS_FREE:
            return shm
    except OSError:
        pass
    return Path(tempfile.gettempdir())
