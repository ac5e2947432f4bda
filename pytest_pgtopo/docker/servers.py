"""PostgreSQL and PgBouncer in containers: the docker backend's server handles.

They answer the same protocols as the local servers (backends.base.PostgresHandle,
PgBouncerHandle); only where the process runs differs. Settings, pg_hba.conf, TLS files and
pgbouncer.ini are written here and copied into the container before it starts; passwords are
generated per server; authentication is scram-sha-256 throughout.
"""

from __future__ import annotations

import secrets
import shlex
from collections.abc import Mapping
from dataclasses import dataclass

from ..admin import AdminConnection, wait_until_connectable
from ..endpoint import Endpoint
from ..pgbouncer_facts import Version, immediate_shutdown_signal
from ..quoting import quote_ident, quote_literal
from ..servers.certificates import ServerTls
from ..servers.initdb_cache import INITDB_ARGS, SUPERUSER
from ..servers.pgbouncer import PgBouncerConsole
from ..servers.postgres import FAST_SETTINGS
from ..tls import TlsClient
from ..types import LOOPBACK
from .containers import INBOX, WORK, Placement, ServerContainer

STOP_SIGNALS = {"fast": "SIGINT", "immediate": "SIGQUIT"}
_BRIDGE_HBA = """\
local      all          all                   scram-sha-256
host       all          all   samenet         scram-sha-256
host       replication  all   samenet         scram-sha-256
"""


@dataclass(frozen=True)
class ImageTools:
    """What an image carries, found by a probe container (see DockerBackend.tools)."""

    bindir: str
    """The PostgreSQL bin directory used (postgres, initdb, pg_basebackup)."""
    postgres_version: str
    pgbouncer: str | None
    """Path of pgbouncer in the image; None if it has none."""
    pgbouncer_version: Version | None

    @property
    def major(self) -> int:
        return int(self.postgres_version.split(".")[0])


def _tls_files(tls: ServerTls | None) -> dict[str, bytes]:
    if tls is None:
        return {}
    files = {"server.crt": tls.cert_pem, "server.key": tls.key_pem}
    if tls.client_ca_pem is not None:
        files["client-ca.pem"] = tls.client_ca_pem
    return files


_COPY_INBOX = f"""set -eu
umask 077
mkdir -p {WORK}
cd {WORK}
for f in {INBOX}/*; do cp "$f" {WORK}/; done
"""
"""Copy the files (root's, 0644) to WORK as the postgres user, private: servers refuse a key
others can read."""


class DockerPostgres:
    """A PostgreSQL server in its own container; a PostgresHandle."""

    def __init__(
        self,
        placement: Placement,
        tools: ImageTools,
        name: str,
        *,
        settings: Mapping[str, str] | None = None,
        hba: str | None = None,
        tls: ServerTls | None = None,
        client_tls: TlsClient | None = None,
    ) -> None:
        self.name = name
        self.tools = tools
        self.container = ServerContainer(placement, name, f"PostgreSQL server {name!r}")
        self.settings = {**FAST_SETTINGS, **(settings or {})}
        self.hba = hba
        self.tls = tls
        self.client_tls = client_tls
        self.password = secrets.token_urlsafe(24)
        self._endpoint: Endpoint | None = None
        self._admin: AdminConnection | None = None

    # --- the handle protocol --------------------------------------------------------------------

    @property
    def label(self) -> str:
        return (
            f"postgres {self.name} (container {self.container.container_name}, "
            f"image {self.container.placement.image}; `docker logs` while it runs)"
        )

    @property
    def endpoint(self) -> Endpoint:
        if self._endpoint is None:
            raise RuntimeError(f"server {self.name} is not running")
        return self._endpoint

    @property
    def admin(self) -> AdminConnection:
        if self._admin is None:
            raise RuntimeError(f"server {self.name} is not running")
        return self._admin

    @property
    def pid(self) -> int | None:
        return self.container.pid

    def is_running(self) -> bool:
        return self.container.is_running()

    def log_tail(self, lines: int = 20) -> str:
        return self.container.log_tail(lines)

    def stop_process(self, mode: str = "fast") -> None:
        """Stop the server (its container) but keep its data: `fast` or `immediate`."""
        if mode not in STOP_SIGNALS:
            raise ValueError(f"mode must be 'fast' or 'immediate', not {mode!r}")
        self._close_admin()
        self.container.signal(STOP_SIGNALS[mode])

    def stop(self) -> None:
        """Remove the container, and with it the data."""
        self._close_admin()
        self.container.remove()

    def _close_admin(self) -> None:
        if self._admin is not None:
            self._admin.close()
            self._admin = None

    # --- starting ---------------------------------------------------------------------------

    @property
    def inner_address(self) -> tuple[str, int]:
        """Where the run's other containers reach this server."""
        return self.container.inner_address

    def start(self) -> None:
        """initdb with the superuser's generated password, then postgres."""
        bindir = shlex.quote(self.tools.bindir)
        init = (
            f"{bindir}/initdb -D data {' '.join(INITDB_ARGS)} --pwfile={WORK}/password "
            f">initdb.log 2>&1 || {{ cat initdb.log >&2; exit 1; }}\n"
            + ("cp pg_hba.conf data/pg_hba.conf\n" if self._hba() is not None else "")
        )
        self._start(init)

    def start_standby_of(self, primary: DockerPostgres, slot: str) -> None:
        """Clone `primary` with pg_basebackup (from inside this container) and stream from it."""
        host, port = primary.inner_address
        source = primary.endpoint
        self.password = source.password  # A base backup copies the primary's roles.
        clone = (
            f'PGPASSWORD="$(cat {WORK}/password)" {shlex.quote(self.tools.bindir)}/pg_basebackup '
            f"--host={host} --port={port} --username={source.user} --pgdata=data "
            f"--wal-method=stream --checkpoint=fast --slot={slot} --no-sync --no-password "
            "</dev/null\n"
            "touch data/standby.signal\n"
        )
        conninfo = (
            f"host={host} port={port} user={source.user} password={source.password} "
            f"application_name={self.name}"
        )
        self.settings.update(primary_conninfo=conninfo, primary_slot_name=slot)
        self._start(clone)

    def _start(self, init: str) -> None:
        script = (
            _COPY_INBOX + f"if [ ! -s data/PG_VERSION ]; then\n{init}fi\n"
            "cp postgresql.auto.conf data/postgresql.auto.conf\n"
            f"exec {shlex.quote(self.tools.bindir)}/postgres -D {WORK}/data\n"
        )

        def files_at(listen: tuple[str, int]) -> dict[str, bytes]:
            files = {"password": self.password.encode(), **_tls_files(self.tls)}
            files["postgresql.auto.conf"] = self._conf(listen).encode()
            hba = self._hba()
            if hba is not None:
                files["pg_hba.conf"] = hba.encode()
            return files

        self._admin = self.container.start(lambda _: script, files_at, self._endpoint_at)
        assert self.container.host_port is not None
        self._endpoint = self._endpoint_at(self.container.host_port)

    def _endpoint_at(self, port: int) -> Endpoint:
        return Endpoint(LOOPBACK, port, SUPERUSER, self.password, "postgres", self.client_tls)

    def _conf(self, listen: tuple[str, int]) -> str:
        settings = {
            **self.settings,
            "listen_addresses": listen[0],
            "port": str(listen[1]),
            "unix_socket_directories": WORK,
        }
        if self.tls is not None:
            settings.update(
                ssl="on", ssl_cert_file=f"{WORK}/server.crt", ssl_key_file=f"{WORK}/server.key"
            )
            if self.tls.client_ca_pem is not None:
                settings["ssl_ca_file"] = f"{WORK}/client-ca.pem"
        return "".join(f"{name} = {quote_literal(value)}\n" for name, value in settings.items())

    def _hba(self) -> str | None:
        """The topology's pg_hba.conf (None: initdb's, scram-sha-256 from loopback). With bridge
        networking clients arrive from the bridge's gateway, not 127.0.0.1: `samenet` (the
        container's own subnet) stands in for loopback; the port is published on this
        machine's loopback only."""
        if self.container.placement.mode == "host":
            return self.hba
        hba = self.hba if self.hba is not None else _BRIDGE_HBA
        return hba.replace("127.0.0.1/32", "samenet").replace("::1/128", "samenet")


class DockerPgBouncer(PgBouncerConsole):
    """A PgBouncer in its own container in front of a server; a PgBouncerHandle."""

    def __init__(
        self,
        placement: Placement,
        tools: ImageTools,
        name: str,
        upstream: Endpoint,
        upstream_inner: tuple[str, int],
        settings: Mapping[str, str],
        *,
        tls: ServerTls | None = None,
        client_tls: TlsClient | None = None,
    ) -> None:
        assert tools.pgbouncer is not None
        assert tools.pgbouncer_version is not None
        self.tools = tools
        self.name = name
        self.upstream = upstream
        self.upstream_inner = upstream_inner
        self.pool_settings = dict(settings)
        self.tls = tls
        self.client_tls = client_tls
        self.container = ServerContainer(
            placement, name, f"PgBouncer {'.'.join(map(str, tools.pgbouncer_version))}"
        )

    @property
    def label(self) -> str:
        return (
            f"pgbouncer (container {self.container.container_name}, "
            f"image {self.container.placement.image})"
        )

    @property
    def version(self) -> Version:
        assert self.tools.pgbouncer_version is not None
        return self.tools.pgbouncer_version

    @property
    def endpoint(self) -> Endpoint:
        if self.container.host_port is None:
            raise RuntimeError("pgbouncer is not running")
        return self._endpoint_at(self.container.host_port)

    def _endpoint_at(self, port: int) -> Endpoint:
        return Endpoint(
            LOOPBACK, port, self.upstream.user, self.upstream.password, "postgres", self.client_tls
        )

    @property
    def pid(self) -> int | None:
        return self.container.pid

    def is_running(self) -> bool:
        return self.container.is_running()

    def log_tail(self, lines: int = 20) -> str:
        return self.container.log_tail(lines)

    def _ini(self, listen: tuple[str, int]) -> str:
        host, port = self.upstream_inner
        settings = {
            "listen_addr": listen[0],
            "listen_port": str(listen[1]),
            "unix_socket_dir": "",
            "auth_type": "scram-sha-256",
            "auth_file": f"{WORK}/userlist.txt",
            "admin_users": self.upstream.user,
            "stats_users": self.upstream.user,
            **self.pool_settings,
        }
        if self.tls is not None:
            settings.update(
                client_tls_sslmode="require",
                client_tls_cert_file=f"{WORK}/server.crt",
                client_tls_key_file=f"{WORK}/server.key",
            )
            if self.tls.client_ca_pem is not None:
                settings["client_tls_ca_file"] = f"{WORK}/client-ca.pem"
        lines = [
            "[databases]",
            f"* = host={host} port={port}",
            "",
            "[pgbouncer]",
            *(f"{name} = {value}" for name, value in settings.items()),
        ]
        return "\n".join(lines) + "\n"

    def start(self) -> None:
        script = _COPY_INBOX + (
            f"exec {shlex.quote(self.tools.pgbouncer or 'pgbouncer')} {WORK}/pgbouncer.ini\n"
        )
        user, password = quote_ident(self.upstream.user), quote_ident(self.upstream.password)

        def files_at(listen: tuple[str, int]) -> dict[str, bytes]:
            return {
                "pgbouncer.ini": self._ini(listen).encode(),
                "userlist.txt": f"{user} {password}\n".encode(),
                **_tls_files(self.tls),
            }

        probe = self.container.start(lambda _: script, files_at, self._endpoint_at)
        probe.close()  # It proved the whole path; holding it would show up in SHOW CLIENTS.

    def restart(self) -> None:
        """Stop (dropping every connection) and start the same container again, same port."""
        self.container.signal(immediate_shutdown_signal(self.version).name, 10.0)
        self.container.start_again()
        probe = wait_until_connectable(self.endpoint, timeout=60.0, alive=self.container.is_running)
        probe.close()

    def stop(self) -> None:
        self.container.remove()
