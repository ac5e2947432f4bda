"""`pg_bouncer`: PgBouncer (transaction pooling by default) in front of one PostgreSQL server."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from ..audit import Target
from ..backends.base import Backend, PgBouncerHandle, PostgresHandle, ServerHandle
from ..endpoint import Endpoint
from ..errors import PgtopoError
from ..pgbouncer_facts import POOL_MODES, PoolMode
from ..recipes.pooler import PgBouncerPooler
from ..servers.certificates import issue_certificates
from ..servers.process import cleanup_on_error
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

    def pgbouncer_settings(self) -> dict[str, str]:
        """The [pgbouncer] settings these options stand for (the backend adds where it
        listens, how it authenticates and its TLS files)."""
        return {
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


class BouncerTopology(Topology):
    """`.primary` is the server itself; `.bouncer` (and `client_endpoint`) goes through PgBouncer."""

    fixture = "pg_bouncer"

    def __init__(
        self, server: PostgresHandle, pgbouncer: PgBouncerHandle, options: BouncerOptions
    ) -> None:
        super().__init__(server)
        self.pgbouncer = pgbouncer
        self.options = options

    @classmethod
    def start(cls, backend: Backend, options: BouncerOptions | None = None) -> BouncerTopology:
        """Start the server, then PgBouncer; on any failure nothing is left running."""
        options = options or BouncerOptions()
        if options.pool_mode not in POOL_MODES:
            raise PgtopoError(
                f"pool_mode must be one of {', '.join(POOL_MODES)}, not {options.pool_mode!r}"
            )
        settings = options.pgbouncer_settings()
        # Checked first, so a bad setting costs no server start.
        backend.check_pgbouncer_settings(settings)
        tls = client_tls = None
        if options.client_tls:
            material = issue_certificates(verify_clients=True)
            tls = material.server
            client_tls = TlsClient(
                backend.client_files("pgbouncer-certs", material.client_files())["ca.pem"]
            )
        with cleanup_on_error() as on_error:
            server = backend.start_postgres("bouncer-pg")
            on_error(server.stop)
            pgbouncer = backend.start_pgbouncer(
                "pgbouncer", server.endpoint, settings, tls=tls, client_tls=client_tls
            )
        return cls(server, pgbouncer, options)

    @property
    def bouncer(self) -> Endpoint:
        return self.pgbouncer.endpoint

    @cached_property
    def pooler(self) -> PgBouncerPooler:
        """What this PgBouncer really does (version, pool mode, effective
        max_prepared_statements), read from its admin console: pass it as `pooler=` to
        create_engine / create_async_engine for engines on `.bouncer`."""
        return PgBouncerPooler.read(self.bouncer)

    @property
    def client_endpoint(self) -> Endpoint:
        return self.bouncer

    @property
    def ca_path(self) -> Path | None:
        """The CA of PgBouncer's client-side certificate, with client_tls; else None."""
        tls = self.pgbouncer.client_tls
        return tls.ca_path if tls is not None else None

    def handles(self) -> list[ServerHandle]:
        return [self.server, self.pgbouncer]

    def release_database(self, name: str) -> None:
        """PgBouncer's idle server connections would make DROP DATABASE wait: drop them."""
        self.kill(name)

    def audit_targets(self) -> dict[int, Target]:
        tls = self.pgbouncer.client_tls is not None
        return {
            self.bouncer.port: Target(
                pooler=self.options.pool_mode, tls=tls, pgbouncer=self.pooler
            ),
            self.primary.port: Target(),
        }

    def describe(self) -> str:
        return (
            f"pg_bouncer bouncer ({self.pooler.describe()}): {self.bouncer.describe()}\n"
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

    def __repr__(self) -> str:
        return (
            f"<BouncerTopology bouncer={self.bouncer.host}:{self.bouncer.port} "
            f"primary={self.primary.host}:{self.primary.port}>"
        )
