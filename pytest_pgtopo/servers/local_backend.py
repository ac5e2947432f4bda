"""The embedded default backend: server processes on this machine, no Docker.

It owns what every local server shares (binaries, the OS user, the run's workspace, the
initdb cache) and is created lazily, so a suite that never asks for a topology pays nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any

from ..runners import local
from ..tls import TlsClient
from ..workspace import Workspace
from .binaries import PgBinaries, find_pg_binaries
from .initdb_cache import CachedCluster, cached_cluster, default_cache_root
from .postgres import PostgresServer


class LocalBackend:
    name = "local"

    def __init__(
        self, *, pg_bindir: Path | None, pg_bindir_source: str, tmp_root: Path, keep: bool
    ) -> None:
        self._pg_bindir = pg_bindir
        self._pg_bindir_source = pg_bindir_source
        self._tmp_root = tmp_root
        self.keep = keep
        self.user = local.server_user()
        self._workspace: Workspace | None = None

    @cached_property
    def binaries(self) -> PgBinaries:
        return find_pg_binaries(self._pg_bindir, self._pg_bindir_source)

    @property
    def workspace(self) -> Workspace:
        if self._workspace is None:
            self._workspace = Workspace(self._tmp_root, self.user, keep=self.keep)
        return self._workspace

    @cached_property
    def cluster(self) -> CachedCluster:
        staging = self.workspace.subdir("initdb")
        return cached_cluster(self.binaries, self.user, default_cache_root(), staging)

    def start_postgres(self, name: str, **options: Any) -> PostgresServer:
        """Start a server from the cached cluster; on any failure nothing is left running.

        `options` are new_postgres()'s: settings, hba, client_tls.
        """
        server = self.new_postgres(name, **options)
        try:
            server.start_from(self.cluster)
        except BaseException:
            server.stop()
            raise
        return server

    @property
    def workspace_path(self) -> Path | None:
        """The workspace directory, or None if nothing was started."""
        return self._workspace.path if self._workspace is not None else None

    def new_postgres(
        self,
        name: str,
        settings: Mapping[str, str] | None = None,
        *,
        hba: str | None = None,
        client_tls: TlsClient | None = None,
    ) -> PostgresServer:
        """A server not yet started, in a fresh directory (for a standby, say)."""
        return PostgresServer(
            name,
            self.binaries,
            self.user,
            self.workspace.subdir(name),
            settings=settings,
            hba=hba,
            client_tls=client_tls,
            keep=self.keep,
        )

    def close(self) -> None:
        """Remove the workspace (servers must be stopped first); kept runs leave it in place."""
        if self._workspace is not None and not self.keep:
            self._workspace.remove()
            self._workspace = None
