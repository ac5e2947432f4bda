"""The life cycle every local server process shares (PostgreSQL and PgBouncer alike).

Start on a free loopback port, retrying when another process takes the port first; ready
when a real password login succeeds, not when a log line appears; a start failure carries
the command, its config file and its last log lines; stop by escalating signals.
Also the two helpers that make cleanup reliable: `cleanup_on_error` and `release_all`.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from ..admin import AdminConnection, wait_until_connectable
from ..endpoint import Endpoint
from ..errors import ServerStartError
from ..runners import local
from ..runners.local import OsUser
from ..types import LOOPBACK
from .watchdog import watchdog

START_TIMEOUT = 60.0
_PORT_ATTEMPTS = 5
_LOG_LINES_ON_FAILURE = 5

StopSteps = Sequence[tuple[int, float]]
"""(signal, grace seconds) pairs, sent in turn until the process has exited."""


def free_port() -> int:
    """A port the OS just reported free; ServerProcess.start retries if another process takes
    it before the server binds it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """One long-running server process on this machine, run as `user` with its output in
    `log_path`. `what` names it in errors ("PostgreSQL server 'plain'", "PgBouncer 1.18.0")."""

    def __init__(
        self,
        what: str,
        *,
        user: OsUser,
        cwd: Path,
        log_path: Path,
        conf_path: Path,
        port_taken: str,
        stop_steps: StopSteps,
        keep: bool = False,
    ) -> None:
        self.what = what
        self.user = user
        self.cwd = cwd
        self.log_path = log_path
        self.conf_path = conf_path
        self.port_taken = port_taken
        """The log line the server writes when its port is already bound."""
        self.stop_steps = stop_steps
        self.keep = keep
        """A kept server must outlive pytest, so it gets no parent-death signal."""
        self.process: subprocess.Popen[bytes] | None = None

    def start(
        self,
        argv_at: Callable[[int], Sequence[str]],
        endpoint_at: Callable[[int], Endpoint],
        *,
        port: int | None = None,
    ) -> tuple[int, AdminConnection]:
        """Start on `port` (or a free one, retried) and return it with the first working login.

        `argv_at(port)` writes the config for that port and returns the command line;
        `endpoint_at(port)` is where the readiness login goes.
        """
        attempts = 1 if port is not None else _PORT_ATTEMPTS
        for attempt in range(attempts):
            chosen = port if port is not None else free_port()
            argv = list(argv_at(chosen))
            self.process = local.spawn(
                argv,
                user=self.user,
                cwd=self.cwd,
                log_path=self.log_path,
                die_with_parent=not self.keep,
            )
            if not self.keep:  # A kept server must outlive pytest; the rest die with it.
                watchdog().register_process(self.process.pid, self.stop_steps[0][0])
            try:
                admin = wait_until_connectable(
                    endpoint_at(chosen), timeout=START_TIMEOUT, alive=self.is_running
                )
            except Exception as exc:  # noqa: BLE001 - any failure becomes a ServerStartError.
                self.stop()
                port_taken = self.port_taken in self.log_tail(_LOG_LINES_ON_FAILURE)
                if port_taken and attempt + 1 < attempts:
                    continue
                raise ServerStartError(self._explain(exc, argv)) from None
            return chosen, admin
        raise AssertionError("unreachable: the last attempt returns or raises")

    @property
    def pid(self) -> int | None:
        """The process id while it runs; None before start and after exit."""
        return self.process.pid if self.is_running() and self.process is not None else None

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        return local.log_tail(self.log_path, lines)

    def signal(self, sig: int, grace: float) -> None:
        """Send one signal and wait up to `grace` seconds; escalate to stop() if it hangs."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(sig)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            self.stop()
        self._forget()

    def stop(self) -> None:
        """Stop by escalating through `stop_steps`, SIGKILL last."""
        local.stop_escalating(self.process, (*self.stop_steps, (signal.SIGKILL, 10.0)))
        self._forget()

    def _forget(self) -> None:
        # Stopped by us: the watchdog must not signal the pid later (it may be reused).
        if self.process is not None and not self.keep and self.process.poll() is not None:
            watchdog().unregister_process(self.process.pid)

    def _explain(self, exc: BaseException, argv: Sequence[str]) -> str:
        return local.explain_start_failure(
            self.what, exc, " ".join(argv), self.user, self.conf_path, self.log_path
        )


class RunsAProcess:
    """What a server handle backed by one ServerProcess (`self.runner`) answers from it."""

    runner: ServerProcess

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        """The Popen of the server process (None before start), for tests of this backend."""
        return self.runner.process

    @property
    def pid(self) -> int | None:
        return self.runner.pid

    def is_running(self) -> bool:
        return self.runner.is_running()

    def log_tail(self, lines: int = 20) -> str:
        return self.runner.log_tail(lines)


@contextlib.contextmanager
def cleanup_on_error() -> Iterator[Callable[[Callable[[], object]], None]]:
    """Register undo steps as resources are made; if the block raises, run them (last first)
    and re-raise the original error. On success nothing runs: the caller owns the resources.

        with cleanup_on_error() as on_error:
            server = start_server(); on_error(server.stop)
            bouncer = start_bouncer(server); on_error(bouncer.stop)
    """
    undo: list[Callable[[], object]] = []
    try:
        yield undo.append
    except BaseException:
        for step in reversed(undo):
            # The original error is the one to report; a failing undo must not hide it.
            with contextlib.suppress(Exception):
                step()
        raise


def release_all(steps: Iterable[Callable[[], object]], what: str) -> None:
    """Run every step even if some fail; then raise the one error, or an ExceptionGroup of all."""
    errors: list[Exception] = []
    for step in steps:
        try:
            step()
        except Exception as exc:  # noqa: BLE001 - gathered and re-raised below.
            errors.append(exc)
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise ExceptionGroup(f"pytest-pgtopo could not release {what}", errors)
