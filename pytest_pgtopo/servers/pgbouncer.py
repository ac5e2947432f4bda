"""One PgBouncer process in front of a PostgreSQL server: find, configure, start, administer, stop.

PgBouncer runs in the foreground (not -d), so its stderr is the log and a config error is seen
at once. It is ready when a real client connection through it reaches the server, not when
its port opens. Every setting written is one the detected version knows: PgBouncer refuses to
start on any name it does not know ("unknown parameter").
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..admin import AdminConnection, wait_until_connectable
from ..endpoint import Endpoint
from ..errors import BinaryNotFoundError, PgtopoError, ServerStartError
from ..runners import local
from ..runners.local import OsUser
from ..tls import TlsClient
from .postgres import LOOPBACK, START_TIMEOUT, free_port

PoolMode = Literal["session", "transaction", "statement"]
POOL_MODES: tuple[PoolMode, ...] = ("session", "transaction", "statement")
Version = tuple[int, int, int]

ENV_BIN = "PGTOPO_PGBOUNCER_BIN"
# Checked after the explicit path, $PGTOPO_PGBOUNCER_BIN and PATH (Debian puts it in /usr/sbin,
# which is not on a normal user's PATH; Homebrew on Apple silicon uses /opt/homebrew).
WELL_KNOWN_PATHS = (
    Path("/usr/sbin/pgbouncer"),
    Path("/usr/local/bin/pgbouncer"),
    Path("/opt/homebrew/bin/pgbouncer"),
)

# Settings newer than some installed PgBouncers, with the release that added them. Not
# exhaustive: it covers the names people copy from current docs. All were checked to make
# 1.18 refuse to start. Anything else unknown still fails, with the log line in the error.
VERSION_GATED_SETTINGS: dict[str, Version] = {
    "track_extra_parameters": (1, 20, 0),
    "max_prepared_statements": (1, 21, 0),
    "auth_ident_file": (1, 23, 0),
    "max_db_client_connections": (1, 24, 0),
    "max_user_client_connections": (1, 24, 0),
}
# Written by PgBouncer itself from its own state; a caller overriding them would break it.
MANAGED_SETTINGS = frozenset({"listen_addr", "listen_port", "auth_file", "pidfile", "logfile"})

_PORT_ATTEMPTS = 5
_ADMIN_DB = "pgbouncer"
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class PgBouncerBinary:
    path: Path
    source: str
    """Where it was found: the explicit path, PGTOPO_PGBOUNCER_BIN, PATH or a well-known path."""
    version: Version
    """From `pgbouncer --version`: 'PgBouncer 1.18.0' -> (1, 18, 0)."""

    @property
    def version_string(self) -> str:
        return ".".join(map(str, self.version))

    def knows(self, setting: str) -> bool:
        return self.version >= VERSION_GATED_SETTINGS.get(setting, (0, 0, 0))


def parse_version(text: str) -> Version:
    match = re.search(r"PgBouncer (\d+)\.(\d+)(?:\.(\d+))?", text)
    if match is None:
        raise BinaryNotFoundError(f"cannot read a PgBouncer version from: {text.strip()!r}")
    major, minor, patch = match.groups()
    return int(major), int(minor), int(patch or 0)


def find_pgbouncer(explicit: Path | None = None) -> PgBouncerBinary:
    """The first pgbouncer binary in: `explicit`, $PGTOPO_PGBOUNCER_BIN, PATH, well-known paths."""
    tried: list[str] = []
    for source, candidate in _candidates(explicit):
        if candidate is None:
            continue
        tried.append(f"{source}: {candidate}")
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return PgBouncerBinary(candidate, source, _version(candidate))
        if source in ("explicit path", ENV_BIN):
            # A configured path that is wrong is a mistake to report, not a reason to look elsewhere.
            raise BinaryNotFoundError(
                f"{source} is {candidate}, which is not an executable pgbouncer binary"
            )
    raise BinaryNotFoundError(
        "PgBouncer was not found. Looked in:\n  "
        + "\n  ".join(tried or ["(nowhere)"])
        + "\nInstall it with one of:\n"
        "  Debian/Ubuntu: apt-get install pgbouncer  (installs /usr/sbin/pgbouncer)\n"
        "  macOS:         brew install pgbouncer\n"
        f"  any platform:  set {ENV_BIN} to the pgbouncer binary"
    )


def _candidates(explicit: Path | None) -> Iterator[tuple[str, Path | None]]:
    yield "explicit path", explicit
    from_env = os.environ.get(ENV_BIN)
    yield ENV_BIN, Path(from_env) if from_env else None
    on_path = shutil.which("pgbouncer")
    yield "PATH", Path(on_path) if on_path else None
    for path in WELL_KNOWN_PATHS:
        yield "well-known path", path


def _version(path: Path) -> Version:
    # `pgbouncer --version` runs fine as root; only serving refuses root.
    try:
        out = subprocess.run(
            [str(path), "--version"], capture_output=True, text=True, timeout=30, check=True
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise BinaryNotFoundError(f"{path} --version failed: {exc}") from None
    return parse_version(out.stdout or out.stderr)


def check_settings(binary: PgBouncerBinary, settings: Mapping[str, str]) -> None:
    """Refuse, before anything starts, settings this PgBouncer lacks or that we manage."""
    for name, value in settings.items():
        if name in MANAGED_SETTINGS:
            raise PgtopoError(f"pgbouncer setting {name} is managed by pytest-pgtopo; remove it")
        if "\n" in value or "\n" in name:
            raise PgtopoError(f"pgbouncer setting {name!r} contains a newline")
        if not binary.knows(name):
            added = ".".join(map(str, VERSION_GATED_SETTINGS[name][:2]))
            raise PgtopoError(
                f"PgBouncer {binary.version_string} ({binary.path}) does not know {name} "
                f"(added in {added}); it would refuse to start. Remove the setting or install "
                f"PgBouncer {added} or newer and point {ENV_BIN} at it."
            )


class PgBouncer:
    """A running PgBouncer in `directory` (pgbouncer.ini, userlist.txt, pgbouncer.log)."""

    def __init__(
        self,
        binary: PgBouncerBinary,
        user: OsUser,
        directory: Path,
        server: Endpoint,
        *,
        pool_mode: PoolMode = "transaction",
        default_pool_size: int = 4,
        max_client_conn: int = 200,
        extra_settings: Mapping[str, str] | None = None,
        client_tls: TlsClient | None = None,
        keep: bool = False,
    ) -> None:
        if pool_mode not in POOL_MODES:
            raise PgtopoError(
                f"pool_mode must be one of {', '.join(POOL_MODES)}, not {pool_mode!r}"
            )
        self.extra_settings = dict(extra_settings or {})
        check_settings(binary, self.extra_settings)
        self.binary = binary
        self.user = user
        self.directory = directory
        self.server = server
        self.pool_mode = pool_mode
        self.default_pool_size = default_pool_size
        self.max_client_conn = max_client_conn
        self.keep = keep
        self.client_tls = client_tls
        """How clients verify PgBouncer when it terminates TLS (client_tls_* settings)."""
        self.ini_path = directory / "pgbouncer.ini"
        self.auth_path = directory / "userlist.txt"
        self.log_path = directory / "pgbouncer.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.port: int | None = None

    @property
    def endpoint(self) -> Endpoint:
        """Where clients connect: the server's superuser, through the bouncer, on `postgres`."""
        if self.port is None:
            raise RuntimeError("pgbouncer is not running")
        return self._endpoint_at(self.port)

    def _endpoint_at(self, port: int) -> Endpoint:
        return Endpoint(
            LOOPBACK, port, self.server.user, self.server.password, "postgres", self.client_tls
        )

    def settings(self, port: int) -> dict[str, str]:
        """What pgbouncer.ini's [pgbouncer] section holds when listening on `port`."""
        # The unix socket path must fit in sun_path (108 bytes); TCP is what clients use anyway.
        socket_dir = str(self.directory) if len(str(self.directory)) < 80 else ""
        return {
            "listen_addr": LOOPBACK,
            "listen_port": str(port),
            "unix_socket_dir": socket_dir,
            "pidfile": str(self.directory / "pgbouncer.pid"),
            # A plain-text password serves both sides of SCRAM: clients to PgBouncer and
            # PgBouncer to the server (1.18 checked); no verifier from pg_authid is needed.
            "auth_type": "scram-sha-256",
            "auth_file": str(self.auth_path),
            "admin_users": self.server.user,
            "stats_users": self.server.user,
            "pool_mode": self.pool_mode,
            "default_pool_size": str(self.default_pool_size),
            "max_client_conn": str(self.max_client_conn),
            # After a failed server login PgBouncer waits this long before trying again (15 s by
            # default): a test that restarts the server should not stall on it.
            "server_login_retry": "1",
            # No ignore_startup_parameters: stock PgBouncer refuses search_path, statement_timeout
            # and friends, and a recipe that sends them must fail here as it would in production.
            **self.extra_settings,
        }

    def _write_config(self, port: int) -> None:
        # `*` is a wildcard entry: any database name a client asks for (per-test databases
        # created after start) is forwarded to the same server.
        lines = [
            "[databases]",
            f"* = host={self.server.host} port={self.server.port}",
            "",
            "[pgbouncer]",
            *(f"{name} = {value}" for name, value in self.settings(port).items()),
        ]
        self.ini_path.write_text("\n".join(lines) + "\n")
        user = self.server.user.replace('"', '""')
        password = self.server.password.replace('"', '""')
        self.auth_path.write_text(f'"{user}" "{password}"\n')
        self.auth_path.chmod(0o600)
        local.chown_tree(self.directory, self.user)

    def start(self) -> None:
        """Start on a free port, retrying when another process takes it first."""
        for attempt in range(_PORT_ATTEMPTS):
            if self._launch(free_port(), port_may_move=attempt + 1 < _PORT_ATTEMPTS):
                return

    def restart(self) -> None:
        """Stop (dropping every client and server connection) and start again on the same port."""
        port = self.port
        if port is None:
            raise RuntimeError("pgbouncer was never started")
        self._kill()
        self._launch(port, port_may_move=False)

    def _launch(self, port: int, *, port_may_move: bool) -> bool:
        """Start on `port`; False if the port was taken and the caller may pick another."""
        self._write_config(port)
        self.process = local.spawn(
            [str(self.binary.path), str(self.ini_path)],
            user=self.user,
            cwd=self.directory,
            log_path=self.log_path,
            die_with_parent=not self.keep,
        )
        try:
            probe = wait_until_connectable(
                self._endpoint_at(port), timeout=START_TIMEOUT, alive=self.is_running
            )
        except Exception as exc:  # noqa: BLE001 - any failure becomes a ServerStartError.
            self._kill()
            if port_may_move and "Address already in use" in self.log_tail(5):
                return False
            raise ServerStartError(self._explain_failure(exc)) from None
        # The probe proved the whole path works; holding it would show up in SHOW CLIENTS.
        probe.close()
        self.port = port
        return True

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        return local.log_tail(self.log_path, lines)

    def _explain_failure(self, exc: BaseException) -> str:
        return local.explain_start_failure(
            f"PgBouncer {self.binary.version_string}",
            exc,
            f"{self.binary.path} {self.ini_path}",
            self.user,
            self.ini_path,
            self.log_path,
        )

    def admin(self, command: str) -> list[dict[str, Any]]:
        """Run one admin console command (SHOW POOLS, PAUSE, ...) and return its rows as dicts.

        Each call opens its own short connection to the `pgbouncer` database, so it works
        across restarts and never lingers in SHOW CLIENTS.
        """
        console = AdminConnection(self.endpoint.with_dbname(_ADMIN_DB))
        try:
            return console.rows(command)  # PAUSE, RESUME, RECONNECT: no rows.
        finally:
            console.close()

    def show(self, what: str) -> list[dict[str, Any]]:
        """SHOW POOLS / STATS / CLIENTS / SERVERS / DATABASES / CONFIG ..., rows as dicts."""
        return self.admin(f"SHOW {_word(what)}")

    def pause(self, db: str | None = None) -> None:
        """PAUSE: waits until every server connection is released; later queries wait for RESUME."""
        self.admin(_with_db("PAUSE", db))

    def resume(self, db: str | None = None) -> None:
        self.admin(_with_db("RESUME", db))

    def reconnect(self, db: str | None = None) -> None:
        """RECONNECT: close each server connection once it is released (transparent to clients)."""
        self.admin(_with_db("RECONNECT", db))

    def kill(self, db: str) -> None:
        """KILL db, then RESUME db: drop its client and server connections now; new clients
        may connect again (after KILL alone they would wait for a RESUME).

        Call it before DROP DATABASE: otherwise PgBouncer's idle server connections make a plain
        drop fail ("being accessed by other users") and WITH (FORCE) wait ~100 ms for them.
        """
        self.admin(_with_db("KILL", db))
        self.admin(_with_db("RESUME", db))

    def stop(self) -> None:
        """Stop immediately, escalating to SIGKILL if it hangs; then delete its files."""
        self._kill()
        shutil.rmtree(self.directory, ignore_errors=True)

    def _kill(self) -> None:
        # Immediate shutdown is SIGTERM before 1.23 and SIGQUIT since, when SIGTERM turned
        # into a shutdown that waits for every client to disconnect.
        immediate = signal.SIGQUIT if self.binary.version >= (1, 23, 0) else signal.SIGTERM
        local.stop_escalating(self.process, ((immediate, 10.0), (signal.SIGKILL, 10.0)))


def _word(text: str) -> str:
    if not _IDENT.fullmatch(text):
        raise PgtopoError(f"not a PgBouncer console word: {text!r}")
    return text.upper()


def _with_db(command: str, db: str | None) -> str:
    # The console takes a bare database name; refuse anything it could misparse.
    if db is None:
        return command
    if not _IDENT.fullmatch(db):
        raise PgtopoError(f"database name {db!r} cannot be passed to the PgBouncer console")
    return f"{command} {db}"
