"""Run server processes on this machine, as an unprivileged user when pytest runs as root.

initdb, postgres and pgbouncer all refuse to run as root, and CI runs as root. So when the
current user is root every server process runs as another OS user (``postgres`` if it exists,
else ``nobody``, or ``PGTOPO_SERVER_USER``), with HOME and cwd in a directory that user owns.
"""

from __future__ import annotations

import os
import pwd
import queue
import subprocess
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ..errors import PgtopoError
from .host import parent_death_signal

T = TypeVar("T")


@dataclass(frozen=True)
class OsUser:
    """The OS account server processes run as."""

    name: str
    uid: int
    gid: int

    @property
    def is_current(self) -> bool:
        return self.uid == os.geteuid()


def server_user() -> OsUser:
    """Who runs server processes: the current user, unless that is root."""
    if os.geteuid() != 0:
        entry = pwd.getpwuid(os.geteuid())
        return OsUser(entry.pw_name, entry.pw_uid, entry.pw_gid)
    wanted = os.environ.get("PGTOPO_SERVER_USER")
    for name in [wanted] if wanted else ["postgres", "nobody"]:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return OsUser(entry.pw_name, entry.pw_uid, entry.pw_gid)
    raise PgtopoError(
        "pytest runs as root and PostgreSQL refuses to run as root, but no unprivileged user "
        f"was found ({wanted or 'postgres, nobody'}); create one (useradd --system postgres) "
        "or set PGTOPO_SERVER_USER to an existing user"
    )


def chown_tree(path: Path, user: OsUser) -> None:
    """Give `path` and everything under it to `user` (a no-op when we already are that user)."""
    if user.is_current:
        return
    os.chown(path, user.uid, user.gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(os.path.join(root, name), user.uid, user.gid, follow_symlinks=False)


# The parent-death signal follows the THREAD that forked the child, not the process: a server
# forked from a short-lived thread (a topology built in a helper thread) got SIGQUIT the moment
# that thread ended. So every server is forked by one daemon thread that lives as long as the
# process, and the signal fires only when the process dies.
_spawn_requests: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = queue.SimpleQueue()
_spawner_lock = threading.Lock()
_spawner: threading.Thread | None = None


def _serve_spawn_requests() -> None:
    while True:
        call, done = _spawn_requests.get()
        try:
            done.set_result(call())
        except BaseException as exc:  # noqa: BLE001 - the caller waits for it and raises it
            done.set_exception(exc)


def _in_spawner_thread(call: Callable[[], T]) -> T:
    """Run `call` (a Popen) in the process's one long-lived spawner thread and return its result."""
    global _spawner
    with _spawner_lock:
        if _spawner is None or not _spawner.is_alive():  # First use, or a forked child process.
            _spawner = threading.Thread(
                target=_serve_spawn_requests, name="pgtopo-spawner", daemon=True
            )
            _spawner.start()
    done: Future[T] = Future()
    _spawn_requests.put((call, done))
    return done.result()


def _child_env(home: Path, extra: dict[str, str] | None) -> dict[str, str]:
    # A minimal environment: HOME the child can read (libpq looks for ~/.postgresql there),
    # no inherited PG* variables that would change what the child connects to.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LC_ALL": "C"}
    env.update(extra or {})
    return env


def spawn(
    argv: Sequence[str],
    *,
    user: OsUser,
    cwd: Path,
    log_path: Path,
    die_with_parent: bool = True,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start a long-running server process with stdout and stderr going to `log_path`.

    With `die_with_parent`, the server gets SIGQUIT when this process dies (Linux; see
    parent_death_signal), and it is forked from the spawner thread, so it outlives the thread
    that asked for it."""
    preexec = parent_death_signal() if die_with_parent else None

    def start() -> subprocess.Popen[bytes]:
        with open(log_path, "ab") as log:
            return subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=_child_env(cwd, env),
                start_new_session=True,  # Ctrl-C in the terminal must not reach the server first.
                preexec_fn=preexec,
                user=None if user.is_current else user.uid,
                group=None if user.is_current else user.gid,
                extra_groups=None if user.is_current else [],
            )

    return _in_spawner_thread(start) if preexec is not None else start()


def run(
    argv: Sequence[str], *, user: OsUser, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a short command to completion as `user`; raises PgtopoError with its output on failure."""
    result = subprocess.run(
        list(argv),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=_child_env(cwd, env),
        timeout=300,
        user=None if user.is_current else user.uid,
        group=None if user.is_current else user.gid,
        extra_groups=None if user.is_current else [],
    )
    if result.returncode != 0:
        raise PgtopoError(
            f"command failed with exit code {result.returncode}: {' '.join(argv)}\n"
            f"{result.stdout}{result.stderr}"
        )
    return result


def stop_escalating(
    process: subprocess.Popen[bytes] | None, steps: Sequence[tuple[int, float]]
) -> None:
    """Send each (signal, grace seconds) in turn until the process has exited."""
    if process is None or process.poll() is not None:
        return
    for sig, grace in steps:
        process.send_signal(sig)
        try:
            process.wait(grace)
            return
        except subprocess.TimeoutExpired:
            continue


def log_tail(path: Path, lines: int = 20) -> str:
    """The last `lines` lines of a log file ('' if it does not exist)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def explain_start_failure(
    what: str, exc: BaseException, command: str, user: OsUser, conf: Path, log: Path
) -> str:
    """A start failure that explains itself: the command, its config file, its last log lines."""
    conf_text = conf.read_text() if conf.exists() else "(missing)\n"
    return (
        f"{what} did not start: {exc}\n"
        f"command: {command} (as OS user {user.name})\n"
        f"--- {conf} ---\n{conf_text}"
        f"--- last 20 lines of {log} ---\n{log_tail(log, 20)}"
    )
