"""The per-session server settings the cheatsheet recommends, as one value object."""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass

from ..errors import PgtopoWarning

# Names that tell an operator nothing in pg_stat_activity: a driver's or a tool's default.
GENERIC_APPLICATION_NAMES = frozenset(
    {"python", "sqlalchemy", "app", "application", "default", "test", "psql", "postgres"}
    | {"asyncpg", "psycopg", "psycopg2", "pg8000", "pgbouncer"}
)


def application_name_problem(name: str | None) -> str | None:
    """Why `name` cannot tell this client apart in pg_stat_activity, or None if it can."""
    if name is None or not name.strip():
        return (
            "application_name is empty: pg_stat_activity and the server log cannot tell who is who"
        )
    if name.strip().lower() in GENERIC_APPLICATION_NAMES:
        return (
            f"application_name {name!r} is generic: name the service (and role), e.g. 'orders-api'"
        )
    return None


@dataclass(frozen=True)
class SessionSettings:
    """Server settings applied to every connection an engine opens.

    Durations are milliseconds (int) or a PostgreSQL duration string such as ``"5s"``.
    ``None`` leaves the server's default in place. On a direct connection they are sent as
    startup parameters, so they cost no extra round trip.
    """

    application_name: str = "pytest-pgtopo"
    """Shown in pg_stat_activity and logs; name the service so an operator can tell who is who."""
    timezone: str | None = "UTC"
    search_path: str | None = None
    statement_timeout: int | str | None = 30_000
    """Cancels any statement running longer; a runaway query should not hold a connection."""
    idle_in_transaction_session_timeout: int | str | None = 60_000
    """Ends a session left idle inside an open transaction, which holds locks and blocks vacuum."""
    lock_timeout: int | str | None = None
    read_only: bool = False
    """default_transaction_read_only=on: every transaction is read-only unless it says
    otherwise; the cheatsheet's guard for engines pointed at a replica."""

    def __post_init__(self) -> None:
        problem = application_name_problem(self.application_name)
        if problem is not None and not self.application_name.strip():
            raise ValueError(f"{problem}; set SessionSettings(application_name=...)")
        if problem is not None:
            warnings.warn(PgtopoWarning(problem), stacklevel=3)

    def server_settings(self) -> dict[str, str]:
        """GUC name -> value, for the settings that are not None."""
        values = {
            "application_name": self.application_name,
            "TimeZone": self.timezone,
            "search_path": self.search_path,
            "statement_timeout": self.statement_timeout,
            "idle_in_transaction_session_timeout": self.idle_in_transaction_session_timeout,
            "lock_timeout": self.lock_timeout,
            "default_transaction_read_only": "on" if self.read_only else None,
        }
        return {name: str(value) for name, value in values.items() if value is not None}

    def replace(self, **changes: object) -> SessionSettings:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]
