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
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..admin import AdminConnection
from ..endpoint import Endpoint
from ..errors import BinaryNotFoundError, PgtopoError
from ..pgbouncer_facts import (
    VERSION_GATED_SETTINGS,
    Version,
    immediate_shutdown_signal,
    knows,
    parse_version,
)
from ..quoting import quote_ident
from ..runners import local
from ..runners.local import OsUser
from ..tls import TlsClient
from ..types import LOOPBACK
from .process import RunsAProcess, ServerProcess

ENV_BIN = "PGTOPO_PGBOUNCER_BIN"
# Checked after the explicit path, $PGTOPO_PGBOUNCER_BIN and PATH (Debian puts it in /usr/sbin,
# which is not on a normal user's PATH; Homebrew on Apple silicon uses /opt/homebrew).
WELL_KNOWN_PATHS = (
    Path("/usr/sbin/pgbouncer"),
    Path("/usr/local/bin/pgbouncer"),
    Path("/opt/homebrew/bin/pgbouncer"),
)

# Written by PgBouncer itself from its own state; a caller overriding them would break it.
MANAGED_SETTINGS = frozenset({"listen_addr", "listen_port", "auth_file", "pidfile", "logfile"})

_ADMIN_DB = "pgbouncer"
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class PgBouncerBinary:
    path: Path
    source: str
    """Where it was found: the channel that configured it (`--pgtopo-pgbouncer-bin`, `ini ...`,
    `env PGTOPO_PGBOUNCER_BIN`), PATH or a well-known path."""
    version: Version
    """From `pgbouncer --version`: 'PgBouncer 1.18.0' -> (1, 18, 0)."""

    @property
    def version_string(self) -> str:
        return ".".join(map(str, self.version))

    def knows(self, setting: str) -> bool:
        return knows(self.version, setting)


_CHANNELS = f"--pgtopo-pgbouncer-bin (ini pgtopo_pgbouncer_bin, env {ENV_BIN})"
_INSTALL = (
    "Install it with one of:\n"
    "  Debian/Ubuntu: apt-get install pgbouncer  (installs /usr/sbin/pgbouncer)\n"
    "  macOS:         brew install pgbouncer\n"
    f"  any platform:  point {_CHANNELS} at the pgbouncer binary"
)


def find_pgbouncer(
    explicit: Path | None = None, explicit_source: str = "explicit path"
) -> PgBouncerBinary:
    """The first pgbouncer binary in: `explicit`, $PGTOPO_PGBOUNCER_BIN, PATH, well-known paths.

    `explicit_source` names the channel `explicit` came from (an option, `ini ...`, `env ...`).
    """
    tried: list[str] = []
    for source, candidate in _candidates(explicit, explicit_source):
        if candidate is None:
            continue
        tried.append(f"{source}: {candidate}")
        configured = source in (explicit_source, f"env {ENV_BIN}")
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return PgBouncerBinary(candidate, source, _version(candidate, source, configured))
        if configured:
            # A configured path that is wrong is a mistake to report, not a reason to look elsewhere.
            raise BinaryNotFoundError(
                f"{source} is {candidate}, which is not an executable file; point {_CHANNELS} at the "
                f"pgbouncer binary, or unset it to search PATH and {_well_known()}.\n{_INSTALL}"
            )
    raise BinaryNotFoundError(
        "PgBouncer was not found. Looked in:\n  "
        + "\n  ".join(tried or ["(nowhere)"])
        + f"\n{_INSTALL}"
    )


def _candidates(explicit: Path | None, explicit_source: str) -> Iterator[tuple[str, Path | None]]:
    yield explicit_source, explicit
    from_env = os.environ.get(ENV_BIN)
    yield f"env {ENV_BIN}", Path(from_env) if from_env else None
    on_path = shutil.which("pgbouncer")
    yield "PATH", Path(on_path) if on_path else None
    for path in WELL_KNOWN_PATHS:
        yield "well-known path", path


def _well_known() -> str:
    return ", ".join(str(path.parent) for path in WELL_KNOWN_PATHS)


def _version(path: Path, source: str, configured: bool) -> Version:
    """`pgbouncer --version`, or an error naming where `path` came from and how to fix that."""
    # `pgbouncer --version` runs fine as root; only serving refuses root.
    command = f"`{path} --version`"
    try:
        out = subprocess.run(
            [str(path), "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except subprocess.TimeoutExpired:
        problem = f"{command} did not answer in 30 s"
    except OSError as exc:
        problem = f"{command} could not start: {exc.strerror}"
    else:
        printed = (out.stdout or out.stderr).strip()
        if out.returncode == 0 and re.search(r"PgBouncer \d", printed):
            return parse_version(printed)
        first = repr(printed.splitlines()[0]) if printed else "nothing"
        problem = (
            f"{command} exited with status {out.returncode} (it printed {first})"
            if out.returncode != 0
            else f"{command} printed no PgBouncer version (it printed {first})"
        )
    if configured:
        what = (
            f"{source}={path}"
            if source.startswith(("--", "ini ", "env "))
            else f"{path} ({source})"
        )
        fix = f"point {_CHANNELS} at a working pgbouncer, or unset it to search PATH and {_well_known()}"
    elif source == "PATH":
        what = f"pgbouncer found on PATH ({path})"
        fix = f"repair or remove it, or point {_CHANNELS} at a working pgbouncer"
    else:
        what = f"{path} (a well-known place, searched after PATH)"
        fix = f"repair or remove it, or point {_CHANNELS} at a working pgbouncer"
    raise BinaryNotFoundError(
        f"{what} does not run as pgbouncer: {problem}. Fix: {fix}.\n{_INSTALL}"
    )


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


class PgBouncerConsole:
    """PgBouncer's admin console, reached through `endpoint` (any backend's PgBouncer)."""

    @property
    def endpoint(self) -> Endpoint:
        raise NotImplementedError

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


class PgBouncer(PgBouncerConsole, RunsAProcess):
    """A running PgBouncer in `directory` (pgbouncer.ini, userlist.txt, pgbouncer.log).

    `settings` are the [pgbouncer] settings its topology chose (pool_mode, pool sizes, TLS
    files, ...); this class adds where it listens, how it authenticates and who administers it.
    """

    def __init__(
        self,
        binary: PgBouncerBinary,
        user: OsUser,
        directory: Path,
        server: Endpoint,
        settings: Mapping[str, str],
        *,
        client_tls: TlsClient | None = None,
        keep: bool = False,
    ) -> None:
        self.pool_settings = dict(settings)
        check_settings(binary, self.pool_settings)
        self.binary = binary
        self.user = user
        self.directory = directory
        self.server = server
        self.client_tls = client_tls
        """How clients verify PgBouncer when it terminates TLS (client_tls_* settings)."""
        self.ini_path = directory / "pgbouncer.ini"
        self.auth_path = directory / "userlist.txt"
        self.log_path = directory / "pgbouncer.log"
        self.runner = ServerProcess(
            f"PgBouncer {binary.version_string}",
            user=user,
            cwd=directory,
            log_path=self.log_path,
            conf_path=self.ini_path,
            port_taken="Address already in use",
            stop_steps=((immediate_shutdown_signal(binary.version), 10.0),),
            keep=keep,
        )
        self.port: int | None = None

    @property
    def label(self) -> str:
        """Names PgBouncer and its log in a failed test's report."""
        return f"pgbouncer ({self.log_path})"

    @property
    def version(self) -> Version:
        return self.binary.version

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
            **self.pool_settings,
        }

    def _write_config(self, port: int) -> list[str]:
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
        # auth_file quotes user and password as SQL quotes identifiers.
        user, password = quote_ident(self.server.user), quote_ident(self.server.password)
        self.auth_path.write_text(f"{user} {password}\n")
        self.auth_path.chmod(0o600)
        local.chown_tree(self.directory, self.user)
        return [str(self.binary.path), str(self.ini_path)]

    def start(self) -> None:
        """Start on a free port, retrying when another process takes it first."""
        self._launch(None)

    def restart(self) -> None:
        """Stop (dropping every client and server connection) and start again on the same port."""
        port = self.port
        if port is None:
            raise RuntimeError("pgbouncer was never started")
        self.runner.stop()
        self._launch(port)

    def _launch(self, port: int | None) -> None:
        self.port, probe = self.runner.start(self._write_config, self._endpoint_at, port=port)
        # The probe proved the whole path works; holding it would show up in SHOW CLIENTS.
        probe.close()

    def stop(self) -> None:
        """Stop immediately, escalating to SIGKILL if it hangs; then delete its files."""
        self.runner.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


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
