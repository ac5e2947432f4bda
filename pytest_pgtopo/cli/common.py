"""What the pgtopo subcommands share: their constants and how they read settings."""

from __future__ import annotations

import os
import signal
from typing import Any, TypeVar

from ..backends.base import ServerHandle
from ..config import OPTIONS, PgtopoConfig
from ..errors import ConfigError
from ..session import TOPOLOGY_STARTERS

PROG = "pgtopo"
TOPOLOGIES = tuple(TOPOLOGY_STARTERS)
"""plain, bouncer, tls, replica: what `pgtopo up` starts (plain by default)."""
DEFAULT_TOPOLOGIES = ("plain", "bouncer", "tls")
"""What `pgtopo doctor` must find runnable to exit 0."""
ROLES: dict[str, tuple[str, ...]] = {
    "plain": ("primary",),
    "bouncer": ("bouncer", "primary"),
    "tls": ("primary",),
    "replica": ("primary", "replica", "stable"),
    "ha": ("primary_endpoint", "read_endpoint", "primary", "replica"),
}
"""The endpoints `pgtopo up` prints per topology, in order: the one applications use first."""
_FROM_ENV = ("pg_bindir", "pg_version", "pgbouncer_bin", "tmpdir")
"""The plugin settings the command reads from their PGTOPO_* variables."""
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
EXIT_USAGE = 2
H = TypeVar("H", bound=ServerHandle)


def _message(exc: Exception) -> str:
    """`pgtopo: <the plugin's own message>`, without its `pytest-pgtopo: ` prefix."""
    return f"{PROG}: {str(exc).removeprefix('pytest-pgtopo: ')}"


def _config(pg_version: str | None = None) -> PgtopoConfig:
    """The local backend, with the plugin's PGTOPO_* settings that say where and how servers
    run; `pg_version` (--pg-version) wins over PGTOPO_PG_VERSION."""
    values: dict[str, Any] = {"backend": "local"}
    sources: dict[str, str] = {"backend": PROG}
    for option in OPTIONS:
        raw = os.environ.get(option.env)
        if option.key not in _FROM_ENV or raw is None:
            continue
        try:
            values[option.key] = option.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"env {option.env}={raw!r} is invalid: {exc}") from None
        sources[option.key] = f"env {option.env}"
    if pg_version is not None:
        values["pg_version"] = pg_version
        sources["pg_version"] = "--pg-version"
    return PgtopoConfig(**values, sources=tuple(sources.items()))


# --- pgtopo up -----------------------------------------------------------------------------------
