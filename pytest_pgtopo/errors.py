"""Exceptions raised by pytest-pgtopo, each carrying a message that says what to do next."""

from __future__ import annotations


class PgtopoError(Exception):
    """Base class for every error pytest-pgtopo raises on purpose."""


class ConfigError(PgtopoError):
    """An option value that cannot work; the plugin reports it as a pytest usage error."""


class BinaryNotFoundError(PgtopoError):
    """A server binary (postgres, initdb, pgbouncer) could not be found."""


class ServerStartError(PgtopoError):
    """A server process did not become ready; the message carries its config and log tail."""


class DriverNotInstalledError(PgtopoError):
    """A driver was selected whose Python package is not importable."""


class DriverUnsupportedError(PgtopoError):
    """A driver was asked for something it cannot do, such as an async engine from psycopg2."""


class TopologyUnavailableError(PgtopoError):
    """The configured backend cannot provide this topology (external serves pg_plain only)."""


class PgtopoAuditError(PgtopoError):
    """--pgtopo-audit=error found a common mistake in an engine's connection."""


class PgtopoWarning(UserWarning):
    """A configuration that works but is a known mistake (a generic application_name, say)."""
