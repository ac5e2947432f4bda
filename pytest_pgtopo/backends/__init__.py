"""Where servers run. `make_backend(config)` turns --pgtopo-backend into a Backend."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Backend, PgBouncerHandle, PostgresHandle, ServerHandle
from .external import ExternalBackend
from .local import LocalBackend

if TYPE_CHECKING:  # The config layer sits above backends; only its type is needed here.
    from ..config import PgtopoConfig
    from ..servers.binaries import PgBinaries

__all__ = [
    "Backend",
    "ExternalBackend",
    "LocalBackend",
    "PgBouncerHandle",
    "PostgresHandle",
    "ServerHandle",
    "make_backend",
]


def make_backend(config: PgtopoConfig, binaries: PgBinaries | None = None) -> Backend:
    """The backend --pgtopo-backend names, running the server build `binaries` (None: the
    external server, or the first build found); `auto` means local (Docker is not built yet)."""
    if config.backend == "external":
        assert config.external_url is not None  # config refuses external without a URL.
        return ExternalBackend(config.external_url)
    return LocalBackend(
        binaries=binaries,
        pgbouncer_bin=config.pgbouncer_bin,
        pgbouncer_bin_source=config.source_of("pgbouncer_bin"),
        tmp_root=config.tmpdir,
        tmp_root_source=config.source_of("tmpdir"),
        keep=config.keep,
        requested=config.backend,
    )
