"""`pgtopo up`: start one topology, print how every driver reaches it, stop it on a signal."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import signal
import ssl
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlencode

from .. import drivers
from ..backends import Backend, LocalBackend
from ..backends.base import HaBackend, HaProxyHandle, PgBouncerHandle, PostgresHandle
from ..endpoint import Endpoint
from ..errors import ConfigError, PgtopoError, TopologyUnavailableError
from ..servers.binaries import PgBinaries
from ..servers.certificates import ServerTls
from ..servers.haproxy import HaNode
from ..session import PgtopoSession
from ..tls import TlsClient
from ..topologies.base import Topology
from .common import _STOP_SIGNALS, PROG, ROLES, H, _config, _message


def _up(args: argparse.Namespace) -> int:
    chosen = list(dict.fromkeys(name for group in args.driver or [] for name in group))
    names = chosen or drivers.installed()
    progress = _Progress(enabled=_isatty(sys.stderr))
    workspace: Path | None = None
    with _Signals() as signals:
        session = _AnnouncingSession(_config(args.pg_version), announce=progress.say)
        status = 0
        try:
            builds = session.server_builds()
            if len(builds) > 1:
                raise ConfigError(
                    f"{session.config.source_of('pg_version')}={session.config.pg_version!r} "
                    f"names several PostgreSQL majors; `{PROG} up` runs one: pass --pg-version NN"
                )
            # Made before anything may be interrupted: a workspace half made when Ctrl-C
            # struck would belong to no one (neither the backend nor the watchdog knew of it).
            workspace = _workspace(session)
            signals.phase = "starting"
            topology = None if signals.received else session.topology(args.topology)
            signals.phase = "up"
            if topology is None or signals.received:  # Asked to stop while starting.
                status = 128 + signals.received[0]
            else:
                info = _UpInfo(args.topology, topology, session, names)
                _emit(json.dumps(info.as_json(), indent=2) if args.json else info.as_text())
                if args.json:
                    progress.say(f"{topology.fixture} is up; Ctrl-C or SIGTERM stops it")
                received = signals.wait()
                progress.say(f"{signal.Signals(received).name}: stopping {topology.fixture} ...")
        except KeyboardInterrupt:  # A second signal during start-up: abandon it now.
            print(
                f"{PROG}: interrupted while starting {args.topology}; stopping what started",
                file=sys.stderr,
            )
            status = 128 + (signals.received or [signal.SIGINT])[0]
        except ConfigError:
            raise
        except PgtopoError as exc:
            print(_message(exc), file=sys.stderr)
            status = 1
        finally:
            signals.phase = "up"  # Nothing cuts the stop short.
            try:
                session.close()
            except Exception as exc:  # noqa: BLE001 - the one place that reports it.
                print(f"{PROG}: could not stop everything: {exc!r}", file=sys.stderr)
                status = 1
        if workspace is not None and workspace.exists():
            print(f"{PROG}: could not remove {workspace}", file=sys.stderr)
            status = status or 1
        elif status in (0, *(128 + number for number in _STOP_SIGNALS)):
            progress.say("stopped; every server and file it started is gone")
    return status


def _workspace(session: PgtopoSession) -> Path | None:
    """Make the local backend's workspace now and return its path (None for other backends)."""
    backend = session.backend
    inner = backend.inner if isinstance(backend, _Announced) else backend
    return inner.workspace.path if isinstance(inner, LocalBackend) else None


class _Signals:
    """SIGINT, SIGTERM and SIGHUP, for the lifetime of `pgtopo up`.

    No handler raises by default: a signal is noted, and the code decides when to act on it.
    During start-up the first one is acted on once the start is done, so the stop that follows
    is the ordinary one, which leaves nothing behind (a start cut midway can leave a server or
    a directory that no one owns yet for a moment). A second one raises KeyboardInterrupt in
    the `starting` phase, for a start that hangs: what started is then stopped by the code that
    started it (and the watchdog). Once the topology is up, `wait()` returns the first signal,
    and the stop that follows is never cut short.

    The main thread waits in select() on the signal module's wakeup fd, written by the C-level
    handler whichever thread the kernel picked (a proxy or spawner thread may get it): no
    polling, and no lock shared with a handler (an Event set from a handler can deadlock).
    """

    def __init__(self) -> None:
        self._phase = "preparing"
        self.received: list[int] = []
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)
        os.set_blocking(self._read, False)
        self._previous: dict[int, Any] = {}
        self._previous_fd = -1

    @property
    def phase(self) -> str:
        """preparing (signals noted), starting (a second one interrupts), up (noted)."""
        return self._phase

    @phase.setter
    def phase(self, phase: str) -> None:
        self._phase = phase
        if phase == "starting" and len(self.received) > 1:
            raise KeyboardInterrupt  # Pressed twice while preparing.

    def __enter__(self) -> _Signals:
        for number in _STOP_SIGNALS:
            self._previous[number] = signal.signal(number, self._handle)
        self._previous_fd = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        return self

    def __exit__(self, *exc: object) -> None:
        signal.set_wakeup_fd(self._previous_fd)
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        os.close(self._read)
        os.close(self._write)

    def _handle(self, number: int, frame: FrameType | None) -> None:
        self.received.append(number)
        if self._phase == "up":
            return
        if len(self.received) > 1:
            if self._phase == "starting":
                raise KeyboardInterrupt
            return
        name = signal.Signals(number).name
        with contextlib.suppress(OSError):  # os.write: print() is not safe in a handler.
            os.write(
                sys.stderr.fileno(),
                f"{PROG}: {name}: stopping once the start-up is done "
                "(Ctrl-C again to interrupt it now)\n".encode(),
            )

    def wait(self) -> int:
        """Block until one of the stop signals arrives (or arrived since start-up); return it."""
        while not self.received:
            select.select([self._read], [], [])
            with contextlib.suppress(BlockingIOError):
                for number in os.read(self._read, 512):
                    if number in _STOP_SIGNALS:
                        return number
        return self.received[0]


@dataclass
class _AnnouncingSession(PgtopoSession):
    """The plugin's session, whose backends say what they start (a line on a terminal)."""

    announce: Callable[[str], None] = lambda line: None

    def backend_for(self, major: int | None = None) -> Backend:
        builds = {build.major: build for build in self.server_builds()}
        build = builds.get(major) if major is not None else next(iter(builds.values()), None)
        return _Announced(super().backend_for(major), self.announce, build)


class _Announced:
    """A Backend that says what it starts before starting it, and when it is ready."""

    def __init__(
        self, inner: Backend, announce: Callable[[str], None], build: PgBinaries | None
    ) -> None:
        self.inner = inner
        self._announce = announce
        self._postgres = f"PostgreSQL {build.short_version}" if build else "PostgreSQL"

    def _started(self, what: str, start: Callable[[], H]) -> H:
        self._announce(f"starting {what} ...")
        began = time.monotonic()
        handle = start()
        where = f"{handle.endpoint.host}:{handle.endpoint.port}"
        self._announce(f"{what} ready on {where} in {time.monotonic() - began:.1f} s")
        return handle

    def describe(self) -> str:
        return self.inner.describe()

    def unavailable(self, topology: str) -> str | None:
        return self.inner.unavailable(topology)

    def start_postgres(
        self,
        name: str,
        *,
        settings: Mapping[str, str] | None = None,
        hba: str | None = None,
        tls: ServerTls | None = None,
        client_tls: TlsClient | None = None,
    ) -> PostgresHandle:
        return self._started(
            f"{self._postgres} ({name}{', TLS only' if tls else ''})",
            lambda: self.inner.start_postgres(
                name, settings=settings, hba=hba, tls=tls, client_tls=client_tls
            ),
        )

    def start_standby(self, name: str, primary: PostgresHandle, slot: str) -> PostgresHandle:
        source = f"{primary.endpoint.host}:{primary.endpoint.port}"
        return self._started(
            f"{self._postgres} standby ({name}, a base backup of {source})",
            lambda: self.inner.start_standby(name, primary, slot),
        )

    # --- what the ha topology needs beyond Backend (backends.base.HaBackend) -------------------

    def _ha(self) -> HaBackend:
        if not isinstance(self.inner, HaBackend):
            raise TopologyUnavailableError("the ha topology needs the local backend")
        return self.inner

    def start_standby_with(
        self, name: str, primary: PostgresHandle, slot: str, settings: Mapping[str, str]
    ) -> PostgresHandle:
        return self._started(
            f"{self._postgres} standby ({name}, a base backup)",
            lambda: self._ha().start_standby_with(name, primary, slot, settings),
        )

    def start_haproxy(self, name: str, nodes: list[HaNode], superuser: Endpoint) -> HaProxyHandle:
        return self._started("HAProxy", lambda: self._ha().start_haproxy(name, nodes, superuser))

    def rewind_and_follow(self, server: PostgresHandle, primary: PostgresHandle, slot: str) -> None:
        self._ha().rewind_and_follow(server, primary, slot)

    def restart_postgres(self, server: PostgresHandle, mode: str = "fast") -> None:
        self._ha().restart_postgres(server, mode)

    def check_pgbouncer_settings(self, settings: Mapping[str, str]) -> None:
        self.inner.check_pgbouncer_settings(settings)

    def start_pgbouncer(
        self,
        name: str,
        upstream: Endpoint,
        settings: Mapping[str, str],
        *,
        tls: ServerTls | None = None,
        client_tls: TlsClient | None = None,
    ) -> PgBouncerHandle:
        version = ""
        if isinstance(self.inner, LocalBackend):
            version = f" {self.inner.pgbouncer_binary.version_string}"
        return self._started(
            f"PgBouncer{version} (in front of {upstream.host}:{upstream.port})",
            lambda: self.inner.start_pgbouncer(
                name, upstream, settings, tls=tls, client_tls=client_tls
            ),
        )

    def client_files(self, name: str, files: Mapping[str, bytes]) -> dict[str, Path]:
        return self.inner.client_files(name, files)

    def keep_report(self) -> list[str]:
        return self.inner.keep_report()

    def close(self) -> None:
        self.inner.close()


class _Progress:
    """Lines about long steps, on stderr, only when stderr is a terminal (stdout stays clean)."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled

    def say(self, line: str) -> None:
        if self.enabled:
            with contextlib.suppress(OSError):  # A terminal closed under us (SIGHUP).
                print(f"{PROG}: {line}", file=sys.stderr, flush=True)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _emit(text: str) -> None:
    """Print to stdout now. A reader that went away (`| head`) must not stop the servers
    early nor leave a BrokenPipeError for exit: later output goes to /dev/null."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


class _UpInfo:
    """What `pgtopo up` prints about a running topology, as text or as one JSON document."""

    def __init__(
        self, name: str, topology: Topology, session: PgtopoSession, names: list[str]
    ) -> None:
        self.name = name
        self.topology = topology
        self.drivers = names
        self.build = session.server_builds()[0]
        self.backend = session.describe_backends()
        backend = session.backend
        inner = backend.inner if isinstance(backend, _Announced) else backend
        self.workspace = inner.workspace_path if isinstance(inner, LocalBackend) else None
        self.endpoints: dict[str, Endpoint] = {}
        for role in ROLES[name]:
            endpoint = getattr(topology, role)
            assert isinstance(endpoint, Endpoint)
            self.endpoints[role] = endpoint

    @property
    def ca_path(self) -> Path | None:
        ca = getattr(self.topology, "ca_path", None)
        return ca if isinstance(ca, Path) else None

    def as_json(self) -> dict[str, Any]:
        return {
            "topology": self.name,
            "fixture": self.topology.fixture,
            "backend": self.backend,
            "postgresql": {
                "major": self.build.major,
                "version": self.build.short_version,
                "bindir": str(self.build.bindir),
                "source": self.build.source,
            },
            "ca_path": str(self.ca_path) if self.ca_path else None,
            "endpoints": {
                role: _endpoint_json(e, self.drivers) for role, e in self.endpoints.items()
            },
            "pids": self.topology.pids(),
            "workspace": str(self.workspace) if self.workspace else None,
            "pid": os.getpid(),
        }

    def as_text(self) -> str:
        lines = [f"{self.topology.fixture} is up: {self.backend}"]
        if self.ca_path:
            lines.append(f"CA certificate: {self.ca_path}")
        width = max(len(name) for name in [*self.drivers, "psql"]) + 2
        for role, endpoint in self.endpoints.items():
            lines += [
                "",
                f"{role}: {endpoint.host}:{endpoint.port}, user {endpoint.user}, "
                f"database {endpoint.dbname}",
                f"  {'psql':<{width}}psql '{_dsn(endpoint)}'",
            ]
            for driver in self.drivers:
                url = endpoint.url(driver).render_as_string(hide_password=False)
                note = "" if drivers.get(driver).is_installed() else "  (not installed)"
                args = _connect_args_text(endpoint.connect_args(driver), endpoint.tls)
                lines += [
                    f"  {driver:<{width}}{url}{note}",
                    f"  {'':<{width}}connect_args={args}",
                ]
        lines.append("")
        if self.workspace:
            lines.append(f"data, sockets and logs: {self.workspace} (removed at exit)")
        lines.append(
            f"Ctrl-C (or kill -TERM {os.getpid()}) stops every server and removes its files."
        )
        return "\n".join(lines)


def _dsn(endpoint: Endpoint) -> str:
    """A libpq URI for psql: the endpoint's DSN with its TLS settings (sslmode, sslrootcert)."""
    query = endpoint.url("psycopg").query  # libpq's spelling, from the one table of drivers.
    return endpoint.describe() + (
        "?" + urlencode(dict(query), doseq=True, safe="/") if query else ""
    )


def _endpoint_json(endpoint: Endpoint, names: list[str]) -> dict[str, Any]:
    tls = endpoint.tls
    return {
        "host": endpoint.host,
        "port": endpoint.port,
        "user": endpoint.user,
        "password": endpoint.password,
        "dbname": endpoint.dbname,
        "dsn": _dsn(endpoint),
        "tls": None
        if tls is None
        else {
            "mode": tls.mode,
            "ca_path": str(tls.ca_path),
            "cert_path": str(tls.cert_path) if tls.cert_path else None,
            "key_path": str(tls.key_path) if tls.key_path else None,
        },
        "drivers": {
            driver: {
                "url": endpoint.url(driver).render_as_string(hide_password=False),
                "connect_args": _json_safe(endpoint.connect_args(driver), tls),
                "installed": drivers.get(driver).is_installed(),
            }
            for driver in names
        },
    }


def _context_text(context: ssl.SSLContext, tls: TlsClient | None) -> str:
    """`ssl.SSLContext(verify-full, cafile=...)`: what the context checks, not its repr."""
    if tls is None:  # Not one of ours: say what it verifies.
        mode = (
            "no verification"
            if context.verify_mode == ssl.CERT_NONE
            else "verify-full"
            if context.check_hostname
            else "verify-ca"
        )
        return f"ssl.SSLContext({mode})"
    parts = [tls.mode, f"cafile={tls.ca_path}"]
    if tls.cert_path is not None:
        parts += [f"certfile={tls.cert_path}", f"keyfile={tls.key_path or tls.cert_path}"]
    if tls.direct:
        parts.append("alpn=postgresql")
    return f"ssl.SSLContext({', '.join(parts)})"


def _connect_args_text(args: Mapping[str, Any], tls: TlsClient | None) -> str:
    def value(item: Any) -> str:
        return _context_text(item, tls) if isinstance(item, ssl.SSLContext) else repr(item)

    return "{" + ", ".join(f"{key!r}: {value(item)}" for key, item in args.items()) + "}"


def _json_safe(item: Any, tls: TlsClient | None) -> Any:
    if isinstance(item, ssl.SSLContext):
        described: dict[str, Any] = {"type": "ssl.SSLContext", "text": _context_text(item, tls)}
        if tls is not None:
            described.update(
                mode=tls.mode,
                cafile=str(tls.ca_path),
                certfile=str(tls.cert_path) if tls.cert_path else None,
                keyfile=str(tls.key_path or tls.cert_path) if tls.cert_path else None,
            )
        return described
    if item is None or isinstance(item, bool | int | float | str):
        return item
    if isinstance(item, Mapping):
        return {str(key): _json_safe(value, tls) for key, value in item.items()}
    if isinstance(item, list | tuple):
        return [_json_safe(value, tls) for value in item]
    return repr(item)


# --- pgtopo doctor -------------------------------------------------------------------------------
