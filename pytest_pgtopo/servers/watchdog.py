"""A watchdog per pytest process: whatever kills pytest, the servers it started go too.

A signal to the server (PR_SET_PDEATHSIG) is Linux-only, follows a thread, and an "ignore"
disposition inherited from a background job swallows it. So each process that starts servers
also starts this small supervisor, in a session of its own, holding the read end of a pipe.
pytest writes a line per server it starts (`proc PID SIGNAL`) and per directory to remove
(`dir PATH`) and per Docker container or network (`docker HOST containers|networks NAME`),
and takes them back when it stops them. When the pipe closes (pytest exited or
died: SIGKILL, os._exit, the OOM killer) or the run's owner is gone (an xdist controller killed
before its workers notice), the watchdog stops every server still registered, escalating to
SIGKILL, and removes the directories still registered: within a few seconds.

The process runs this file as a script (`python watchdog.py OWNER_PID`): standard library only,
so it starts in milliseconds and needs nothing of the package.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

OWNER_ENV = "PGTOPO_RUN_OWNER"
"""The pid of the pytest process the user started (an xdist controller); workers inherit it."""
_POLL = 0.2  # How often the owner's pid is checked while the pipe stays quiet.
_GRACE = 2.0  # Seconds a server gets to stop on its own signal before SIGKILL.


class Watchdog:
    """The pytest side: one per process, started on first registration."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._pid = os.getpid()

    def register_process(self, pid: int, stop_signal: int) -> None:
        self._send(f"proc {pid} {int(stop_signal)}")

    def unregister_process(self, pid: int) -> None:
        self._send(f"unproc {pid}")

    def register_directory(self, path: Path) -> None:
        self._send(f"dir {path}")

    def unregister_directory(self, path: Path) -> None:
        self._send(f"undir {path}")

    def register_docker(self, docker_host: str, kind: str, name: str) -> None:
        """A container or network (`kind`: containers, networks) the engine at `docker_host`
        (unix:///path or tcp://host:port) runs, removed by name when pytest dies."""
        self._send(f"docker {docker_host} {kind} {name}")

    def unregister_docker(self, docker_host: str, kind: str, name: str) -> None:
        self._send(f"undocker {docker_host} {kind} {name}")

    def _send(self, line: str) -> None:
        with self._lock:
            process = self._started()
            assert process.stdin is not None
            try:
                process.stdin.write(line.encode() + b"\n")
                process.stdin.flush()
            except OSError:  # The watchdog died: nothing to tell it; the sweep is the fallback.
                self._process = None

    def _started(self) -> subprocess.Popen[bytes]:
        if self._process is None or self._pid != os.getpid():  # First use, or a forked child.
            owner = os.environ.get(OWNER_ENV, str(os.getpid()))
            self._pid = os.getpid()
            self._process = subprocess.Popen(
                [sys.executable, "-S", "-E", __file__, owner],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C and job control signals never reach it.
                close_fds=True,
            )
        return self._process


_watchdog = Watchdog()


def watchdog() -> Watchdog:
    """This process's watchdog (started on first use)."""
    return _watchdog


# --- the watchdog process ----------------------------------------------------------------------


def alive(pid: int) -> bool:
    """Whether process `pid` exists (someone else's counts too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=30)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(self._path)


def remove_docker(docker_host: str, kind: str, name: str) -> None:
    """Remove a container (forced, with its anonymous volumes) or a network through the engine
    API; the Docker CLI need not be installed. Best effort: errors are ignored."""
    path = f"/{kind}/{name}" + ("?force=true&v=true" if kind == "containers" else "")
    with contextlib.suppress(OSError, http.client.HTTPException):
        if docker_host.startswith("unix://"):
            conn: http.client.HTTPConnection = _UnixHTTPConnection(docker_host[len("unix://") :])
        else:
            host, _, port = docker_host.partition("://")[2].partition(":")
            conn = http.client.HTTPConnection(host, int(port or 2375), timeout=30)
        conn.request("DELETE", path)
        conn.getresponse().read()
        conn.close()


def _stop_all(
    processes: dict[int, int],
    directories: set[str],
    docker: set[tuple[str, str, str]] | None = None,
) -> None:
    # Containers first (all at once: each removal is a SIGKILL and a delete), then networks.
    for kind in ("containers", "networks"):
        removals = [
            threading.Thread(target=remove_docker, args=item, daemon=True)
            for item in sorted(docker or ())
            if item[1] == kind
        ]
        for removal in removals:
            removal.start()
        for removal in removals:
            removal.join(60)
    for pid, sig in processes.items():
        with contextlib.suppress(OSError):
            os.kill(pid, sig)
    deadline = time.monotonic() + _GRACE
    while any(alive(pid) for pid in processes) and time.monotonic() < deadline:
        time.sleep(0.05)  # Not our children: no waitpid, so poll until they are gone.
    for pid in processes:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + _GRACE
    while any(alive(pid) for pid in processes) and time.monotonic() < deadline:
        time.sleep(0.05)
    for path in directories:
        shutil.rmtree(path, ignore_errors=True)


def main(owner: int) -> None:
    for ignored in (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(ignored, signal.SIG_IGN)  # Only a closed pipe or a dead owner ends it.
    processes: dict[int, int] = {}
    directories: set[str] = set()
    docker: set[tuple[str, str, str]] = set()
    pending = b""
    stdin = sys.stdin.fileno()
    while True:
        ready, _, _ = select.select([stdin], [], [], _POLL)
        if not ready:
            if not alive(owner):
                break
            continue
        chunk = os.read(stdin, 65536)
        if not chunk:
            break  # The pytest process is gone (or closed the pipe on purpose after `bye`).
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for raw in lines:
            word, _, rest = raw.decode(errors="replace").partition(" ")
            if word == "proc":
                pid, sig = rest.split()
                processes[int(pid)] = int(sig)
            elif word == "unproc":
                processes.pop(int(rest), None)
            elif word == "dir":
                directories.add(rest)
            elif word == "undir":
                directories.discard(rest)
            elif word in ("docker", "undocker"):
                host, kind, name = rest.split(" ", 2)
                if word == "docker":
                    docker.add((host, kind, name))
                else:
                    docker.discard((host, kind, name))
    _stop_all(processes, directories, docker)


if __name__ == "__main__":
    main(int(sys.argv[1]))
