"""The seam between topologies and the places servers run.

A topology says *what* to run (a PostgreSQL server with these settings, a standby of that
one, a PgBouncer in front of it); a Backend decides *where and how*: which binaries, which
directories and OS user, which ports. Topologies hold only the handles a backend returns.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ..admin import AdminConnection
from ..endpoint import Endpoint
from ..pgbouncer_facts import Version
from ..servers.certificates import ServerTls
from ..servers.haproxy import HaNode
from ..tls import TlsClient


class ServerHandle(Protocol):
    """One server process a backend runs: enough to reach it, read its log and stop it."""

    @property
    def label(self) -> str:
        """Names the server (and where its log is) in a failed test's report."""
        ...

    @property
    def endpoint(self) -> Endpoint:
        """Where a client reaches it, as the superuser, on the `postgres` database."""
        ...

    @property
    def pid(self) -> int | None:
        """Its process id on this machine while it runs, else None."""
        ...

    def is_running(self) -> bool: ...

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of its log ('' where the backend cannot read it)."""
        ...

    def stop(self) -> None:
        """Stop it and remove what it kept on disk."""
        ...


class PostgresHandle(ServerHandle, Protocol):
    """A PostgreSQL server: also an autocommit admin connection and a stop that keeps files."""

    @property
    def admin(self) -> AdminConnection: ...

    @property
    def client_tls(self) -> TlsClient | None:
        """How clients verify it over TLS; None for plain TCP."""
        ...

    def stop_process(self, mode: str = "fast") -> None:
        """Stop it but keep its data: `fast` (clean) or `immediate` (as if it crashed)."""
        ...


class PgBouncerHandle(ServerHandle, Protocol):
    """A PgBouncer: its version, its TLS, its admin console and a restart on the same port."""

    @property
    def version(self) -> Version: ...

    @property
    def client_tls(self) -> TlsClient | None: ...

    def show(self, what: str) -> list[dict[str, Any]]: ...

    def pause(self, db: str | None = None) -> None: ...

    def resume(self, db: str | None = None) -> None: ...

    def reconnect(self, db: str | None = None) -> None: ...

    def kill(self, db: str) -> None: ...

    def restart(self) -> None: ...


class Backend(Protocol):
    """Where servers run. `make_backend(config)` picks one; the session closes it last."""

    def describe(self) -> str:
        """One line for the report header: which backend, which server build."""
        ...

    def unavailable(self, topology: str) -> str | None:
        """None if this backend can run `topology` (plain, bouncer, tls, replica); else why not."""
        ...

    def start_postgres(
        self,
        name: str,
        *,
        settings: Mapping[str, str] | None = None,
        hba: str | None = None,
        tls: ServerTls | None = None,
        client_tls: TlsClient | None = None,
    ) -> PostgresHandle:
        """A running PostgreSQL server with these extra settings and pg_hba.conf (None keeps
        the default: scram-sha-256 on loopback), accepting TLS with `tls`; the plugin's own
        connections verify it with `client_tls`. On failure nothing is left running."""
        ...

    def start_standby(self, name: str, primary: PostgresHandle, slot: str) -> PostgresHandle:
        """A streaming hot standby of `primary`, cloned by base backup, on replication `slot`."""
        ...

    def check_pgbouncer_settings(self, settings: Mapping[str, str]) -> None:
        """Refuse, before anything starts, pgbouncer.ini settings this backend's PgBouncer
        would refuse (too new for its version) or that the backend manages itself."""
        ...

    def start_pgbouncer(
        self,
        name: str,
        upstream: Endpoint,
        settings: Mapping[str, str],
        *,
        tls: ServerTls | None = None,
        client_tls: TlsClient | None = None,
    ) -> PgBouncerHandle:
        """A running PgBouncer in front of `upstream` with these [pgbouncer] settings; with
        `tls` it terminates client TLS (clients verify it with `client_tls`)."""
        ...

    def client_files(self, name: str, files: Mapping[str, bytes]) -> dict[str, Path]:
        """Write files a client on this machine reads (a CA, a client key) and say where;
        readable by the user running pytest only."""
        ...

    def keep_report(self) -> list[str]:
        """With --pgtopo-keep: where what it left running lives and a shell line that stops it."""
        ...

    def close(self) -> None:
        """Release what the backend itself holds (its workspace); servers are stopped first."""
        ...


class HaProxyHandle(ServerHandle, Protocol):
    """A running HAProxy: `primary_port` leads to the primary, `read_port` to the standbys."""

    @property
    def primary_port(self) -> int: ...

    @property
    def read_port(self) -> int: ...

    def up(self, listener: str) -> list[str]:
        """The node names `listener` ('primary' or 'read') routes to now."""
        ...


@runtime_checkable
class HaBackend(Protocol):
    """What a backend offers beyond Backend for the `ha` topology (the local backend does)."""

    def start_standby_with(
        self, name: str, primary: PostgresHandle, slot: str, settings: Mapping[str, str]
    ) -> PostgresHandle:
        """start_standby, with extra settings on the standby."""
        ...

    def start_haproxy(self, name: str, nodes: list[HaNode], superuser: Endpoint) -> HaProxyHandle:
        """HAProxy routing to `nodes` by agent-check; ready when a login through it works."""
        ...

    def rewind_and_follow(self, server: PostgresHandle, primary: PostgresHandle, slot: str) -> None:
        """Rejoin stopped former primary `server` as a standby of `primary` (pg_rewind)."""
        ...

    def restart_postgres(self, server: PostgresHandle, mode: str = "fast") -> None:
        """Stop `server` (`fast` or `immediate`) and start it again on the same port."""
        ...
