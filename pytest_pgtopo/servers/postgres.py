"""One PostgreSQL server process: copy a cached cluster, configure, start, wait, stop.

The server is launched directly (not through pg_ctl, which polls every 100 ms) and is ready
when a real password-authenticated connection succeeds, not when a log line appears.
"""

from __future__ import annotations

import dataclasses
import secrets
import shutil
import signal
from collections.abc import Mapping
from pathlib import Path

from ..admin import AdminConnection
from ..endpoint import Endpoint
from ..quoting import quote_ident, quote_literal
from ..runners import local
from ..runners.local import OsUser
from ..tls import TlsClient
from ..types import LOOPBACK
from .binaries import PgBinaries
from .initdb_cache import SUPERUSER, CachedCluster
from .process import RunsAProcess, ServerProcess

# Durability off: a test server never has to survive a crash, and these make it several times faster.
FAST_SETTINGS: dict[str, str] = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "log_line_prefix": "%m [%p] %q%u@%d ",
}
STOP_MODES = {"fast": signal.SIGINT, "immediate": signal.SIGQUIT}


class PostgresServer(RunsAProcess):
    """A running PostgreSQL server in `directory` (data/, socket/, postgres.log)."""

    def __init__(
        self,
        name: str,
        binaries: PgBinaries,
        user: OsUser,
        directory: Path,
        *,
        settings: Mapping[str, str] | None = None,
        hba: str | None = None,
        client_tls: TlsClient | None = None,
        keep: bool = False,
    ) -> None:
        self.name = name
        self.binaries = binaries
        self.user = user
        self.directory = directory
        self.data_dir = directory / "data"
        self.socket_dir = directory / "socket"
        self.log_path = directory / "postgres.log"
        self.settings = {**FAST_SETTINGS, **(settings or {})}
        self.hba = hba
        """pg_hba.conf contents replacing initdb's; None keeps initdb's (scram-sha-256 everywhere)."""
        self.client_tls = client_tls
        """How the plugin's own connections verify this server; None for plain TCP."""
        self.runner = ServerProcess(
            f"PostgreSQL server {name!r}",
            user=user,
            cwd=directory,
            log_path=self.log_path,
            conf_path=self.conf_path,
            port_taken="could not bind",
            # Fast shutdown first (clean, ~20 ms), then immediate, then SIGKILL.
            stop_steps=((signal.SIGINT, 30.0), (signal.SIGQUIT, 10.0)),
            keep=keep,
        )
        self._endpoint: Endpoint | None = None
        self._admin: AdminConnection | None = None

    @property
    def label(self) -> str:
        """Names the server and its log in a failed test's report."""
        return f"postgres {self.name} ({self.log_path})"

    @property
    def endpoint(self) -> Endpoint:
        """The superuser's endpoint on the `postgres` database."""
        if self._endpoint is None:
            raise RuntimeError(f"server {self.name} is not running")
        return self._endpoint

    @property
    def admin(self) -> AdminConnection:
        if self._admin is None:
            raise RuntimeError(f"server {self.name} is not running")
        return self._admin

    def start_from(self, cluster: CachedCluster) -> None:
        """Copy the cached cluster into place, start it, and give the superuser a fresh password."""
        cluster.copy_to(self.data_dir, self.user)
        self._prepare_directories()
        self._start(cluster.password)
        password = secrets.token_urlsafe(24)
        self.admin.execute(
            f"ALTER ROLE {quote_ident(SUPERUSER)} PASSWORD {quote_literal(password)}"
        )
        self._endpoint = dataclasses.replace(self.endpoint, password=password)

    def start_standby_of(self, source: Endpoint, slot: str) -> None:
        """Clone the server at `source` (a superuser endpoint) with pg_basebackup and start as a
        streaming hot standby on replication slot `slot`."""
        local.run(
            [
                self.binaries["pg_basebackup"],
                f"--host={source.host}",
                f"--port={source.port}",
                f"--username={source.user}",
                f"--pgdata={self.data_dir}",
                "--wal-method=stream",
                "--checkpoint=fast",
                f"--slot={slot}",
                "--no-sync",
                "--no-password",  # Never prompt (it would hang): the password is in the env.
            ],
            user=self.user,
            cwd=self.directory,
            env={"PGPASSWORD": source.password},
        )
        (self.data_dir / "standby.signal").touch()
        local.chown_tree(self.data_dir / "standby.signal", self.user)
        self._prepare_directories()
        conninfo = (
            f"host={source.host} port={source.port} user={source.user} "
            f"password={source.password} application_name={self.name}"
        )
        self.settings.update(primary_conninfo=conninfo, primary_slot_name=slot)
        self._start(source.password)

    def restart(self, mode: str = "fast") -> None:
        """Stop (`fast` or `immediate`) and start again on the same port, data kept."""
        endpoint = self.endpoint
        self.stop_process(mode)
        self._start(endpoint.password, port=endpoint.port)

    def rewind_and_follow(self, source: Endpoint, slot: str) -> None:
        """Rejoin a stopped former primary as a standby of `source` (the promoted node):
        pg_rewind takes its data directory back to where the timelines forked, then it starts
        streaming from `source` on `slot`. Needs wal_log_hints and full_page_writes on."""
        local.run(
            [
                self.binaries["pg_rewind"],
                f"--target-pgdata={self.data_dir}",
                f"--source-server=host={source.host} port={source.port} user={source.user} "
                f"password={source.password} dbname=postgres",
                "--no-sync",
            ],
            user=self.user,
            cwd=self.directory,
        )
        (self.data_dir / "standby.signal").touch()
        local.chown_tree(self.data_dir / "standby.signal", self.user)
        conninfo = (
            f"host={source.host} port={source.port} user={source.user} "
            f"password={source.password} application_name={self.name}"
        )
        self.settings.update(primary_conninfo=conninfo, primary_slot_name=slot)
        port = self.endpoint.port
        self._start(source.password, port=port)

    def _prepare_directories(self) -> None:
        if self.hba is not None:
            (self.data_dir / "pg_hba.conf").write_text(self.hba)
            local.chown_tree(self.data_dir / "pg_hba.conf", self.user)
        self.socket_dir.mkdir(mode=0o700, exist_ok=True)
        local.chown_tree(self.socket_dir, self.user)

    def _start(self, password: str, *, port: int | None = None) -> None:
        def argv_at(port: int) -> list[str]:
            self._write_conf(port)
            return [self.binaries["postgres"], "-D", str(self.data_dir)]

        def endpoint_at(port: int) -> Endpoint:
            return Endpoint(LOOPBACK, port, SUPERUSER, password, "postgres", self.client_tls)

        port, self._admin = self.runner.start(argv_at, endpoint_at, port=port)
        self._endpoint = endpoint_at(port)

    def _write_conf(self, port: int) -> None:
        settings = {
            **self.settings,
            "listen_addresses": LOOPBACK,
            "port": str(port),
            "unix_socket_directories": str(self.socket_dir),
        }
        # postgresql.auto.conf is read last, so these win over anything in postgresql.conf.
        self.conf_path.write_text(
            "".join(f"{name} = {quote_literal(value)}\n" for name, value in settings.items())
        )
        local.chown_tree(self.conf_path, self.user)

    @property
    def conf_path(self) -> Path:
        return self.data_dir / "postgresql.auto.conf"

    def stop_process(self, mode: str = "fast") -> None:
        """Stop the server but keep its files: `fast` (SIGINT, clean) or `immediate` (SIGQUIT,
        as if it crashed). Its connections, the plugin's included, are gone afterwards."""
        if mode not in STOP_MODES:
            raise ValueError(f"mode must be 'fast' or 'immediate', not {mode!r}")
        self._close_admin()
        self.runner.signal(STOP_MODES[mode], 30.0)

    def stop(self) -> None:
        """Fast shutdown (SIGINT), escalating to immediate and kill if it hangs; then delete files."""
        self._close_admin()
        self.runner.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def _close_admin(self) -> None:
        if self._admin is not None:
            self._admin.close()
            self._admin = None
