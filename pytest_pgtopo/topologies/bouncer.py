"""`pg_bouncer`: PgBouncer (transaction pooling by default) in front of one PostgreSQL server."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..audit import Target
from ..endpoint import Endpoint
from ..servers.certificates import issue_certificates
from ..servers.local_backend import LocalBackend
from ..servers.pgbouncer import PgBouncer, PoolMode, check_settings, find_pgbouncer
from ..servers.postgres import PostgresServer
from ..tls import TlsClient
from .base import Topology


@dataclass(frozen=True)
class BouncerOptions:
    pool_mode: PoolMode = "transaction"
    default_pool_size: int = 4
    max_client_conn: int = 200
    extra_settings: dict[str, str] = field(default_factory=dict)
    """Extra pgbouncer.ini [pgbouncer] settings; checked against the installed version first."""
    client_tls: bool = False
    """Terminate client TLS at PgBouncer (client_tls_sslmode=require, a trustme certificate):
    plaintext clients are refused and `.bouncer` verifies PgBouncer with verify-full."""


class BouncerTopology(Topology):
    """`.primary` is the server itself; `.bouncer` (and `client_endpoint`) goes through PgBouncer."""

    name = "bouncer"
    fixture = "pg_bouncer"

    def __init__(self, server: PostgresServer, pgbouncer: PgBouncer) -> None:
        super().__init__(server)
        self.pgbouncer = pgbouncer

    @classmethod
    def start(
        cls,
        backend: LocalBackend,
        options: BouncerOptions | None = None,
        *,
        pgbouncer_bin: Path | None = None,
    ) -> BouncerTopology:
        """Start the server, then PgBouncer; on any failure nothing is left running.

        `pgbouncer_bin` is the configured binary; None searches PGTOPO_PGBOUNCER_BIN, PATH
        and the well-known install paths.
        """
        options = options or BouncerOptions()
        # Binary and settings are checked first, so a bad setting costs no server start.
        binary = find_pgbouncer(pgbouncer_bin)
        check_settings(binary, options.extra_settings)
        settings, client_tls = dict(options.extra_settings), None
        if options.client_tls:
            files = issue_certificates(backend.workspace.subdir("pgbouncer-certs"), backend.user)
            settings.update(
                client_tls_sslmode="require",
                client_tls_cert_file=str(files.server_cert),
                client_tls_key_file=str(files.server_key),
                client_tls_ca_file=str(files.ca_path),
            )
            client_tls = TlsClient(files.ca_path)
        server = backend.start_postgres("bouncer-pg")
        pgbouncer: PgBouncer | None = None
        try:
            pgbouncer = PgBouncer(
                binary,
                backend.user,
                backend.workspace.subdir("pgbouncer"),
                server.endpoint,
                pool_mode=options.pool_mode,
                default_pool_size=options.default_pool_size,
                max_client_conn=options.max_client_conn,
                extra_settings=settings,
                client_tls=client_tls,
                keep=backend.keep,
            )
            pgbouncer.start()
        except BaseException:
            if pgbouncer is not None:
                pgbouncer.stop()
            server.stop()
            raise
        return cls(server, pgbouncer)

    @property
    def bouncer(self) -> Endpoint:
        return self.pgbouncer.endpoint

    @property
    def client_endpoint(self) -> Endpoint:
        return self.bouncer

    @property
    def ca_path(self) -> Path | None:
        """The CA of PgBouncer's client-side certificate, with client_tls; else None."""
        tls = self.pgbouncer.client_tls
        return tls.ca_path if tls is not None else None

    def pids(self) -> list[int]:
        process = self.pgbouncer.process
        running = [process.pid] if process is not None and process.poll() is None else []
        return [*super().pids(), *running]

    def audit_targets(self) -> dict[int, Target]:
        tls = self.pgbouncer.client_tls is not None
        return {
            self.bouncer.port: Target(pooler=self.pgbouncer.pool_mode, tls=tls),
            self.primary.port: Target(),
        }

    def log_tails(self, lines: int = 20) -> dict[str, str]:
        return {
            **super().log_tails(lines),
            f"pgbouncer ({self.pgbouncer.log_path})": self.pgbouncer.log_tail(lines),
        }

    def describe(self) -> str:
        return (
            f"pg_bouncer bouncer ({self.pgbouncer.pool_mode} pooling, PgBouncer "
            f"{self.pgbouncer.binary.version_string}): {self.bouncer.describe()}\n"
            f"pg_bouncer primary: {self.primary.describe()}"
        )

    def show_pools(self) -> list[dict[str, Any]]:
        return self.pgbouncer.show("POOLS")

    def show_stats(self) -> list[dict[str, Any]]:
        return self.pgbouncer.show("STATS")

    def show_clients(self) -> list[dict[str, Any]]:
        return self.pgbouncer.show("CLIENTS")

    def pause(self, db: str | None = None) -> None:
        self.pgbouncer.pause(db)

    def resume(self, db: str | None = None) -> None:
        self.pgbouncer.resume(db)

    def reconnect(self, db: str | None = None) -> None:
        self.pgbouncer.reconnect(db)

    def kill(self, db: str) -> None:
        """Drop the bouncer's connections to `db`, e.g. before DROP DATABASE on the server."""
        self.pgbouncer.kill(db)

    def restart_bouncer(self) -> None:
        self.pgbouncer.restart()

    def stop(self) -> None:
        """The bouncer first, so it never logs the server vanishing under it."""
        try:
            self.pgbouncer.stop()
        finally:
            super().stop()

    def __repr__(self) -> str:
        return (
            f"<BouncerTopology bouncer={self.bouncer.host}:{self.bouncer.port} "
            f"primary={self.primary.host}:{self.primary.port}>"
        )
