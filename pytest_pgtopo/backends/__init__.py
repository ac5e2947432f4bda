"""Where servers run. `make_backend(config)` turns --pgtopo-backend into a Backend."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import PgtopoError
from .base import Backend, PgBouncerHandle, PostgresHandle, ServerHandle
from .docker import DockerBackend
from .external import ExternalBackend
from .local import LocalBackend

if TYPE_CHECKING:  # The config layer sits above backends; only its type is needed here.
    from ..config import PgtopoConfig
    from ..servers.binaries import PgBinaries

__all__ = [
    "Backend",
    "DockerBackend",
    "ExternalBackend",
    "LocalBackend",
    "PgBouncerHandle",
    "PostgresHandle",
    "ServerHandle",
    "auto_picks_docker",
    "make_backend",
]


def make_backend(
    config: PgtopoConfig, binaries: PgBinaries | None = None, *, major: int | None = None
) -> Backend:
    """The backend --pgtopo-backend names, running the server build `binaries` (None: the
    external server, or the first build found) or, on docker, PostgreSQL `major` (None: the
    newest image). `auto` means local binaries when there are any, else a reachable Docker
    engine (with the testcontainers extra installed), else local (whose error says what to
    install)."""
    if config.backend == "external":
        assert config.external_url is not None  # config refuses external without a URL.
        return ExternalBackend(config.external_url)
    if config.backend == "docker" or (config.backend == "auto" and auto_picks_docker(binaries)):
        return DockerBackend(
            image=config.docker_image,
            image_source=config.source_of("docker_image"),
            major=major,
            network=config.docker_network,
            network_source=config.source_of("docker_network"),
            keep=config.keep,
            requested=config.backend,
        )
    return LocalBackend(
        binaries=binaries,
        pgbouncer_bin=config.pgbouncer_bin,
        pgbouncer_bin_source=config.source_of("pgbouncer_bin"),
        tmp_root=config.tmpdir,
        tmp_root_source=config.source_of("tmpdir"),
        keep=config.keep,
        requested=config.backend,
    )


def auto_picks_docker(binaries: PgBinaries | None = None) -> bool:
    """For --pgtopo-backend=auto: no PostgreSQL build here, and a Docker engine answers."""
    if binaries is not None:
        return False
    from ..docker.engine import unreachable_reason
    from ..servers.binaries import find_pg_binaries

    try:
        find_pg_binaries(None)
    except PgtopoError:
        return unreachable_reason() is None
    return False
