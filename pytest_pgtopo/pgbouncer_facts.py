"""What each PgBouncer release does, as data: settings it knows, startup parameters it tracks,
the signal that stops it at once. The server code and the pooler recipe both read these.
"""

from __future__ import annotations

import re
import signal
from typing import Literal

from .errors import BinaryNotFoundError

Version = tuple[int, int, int]
PoolMode = Literal["session", "transaction", "statement"]
POOL_MODES: tuple[PoolMode, ...] = ("session", "transaction", "statement")

# Settings newer than some installed PgBouncers, with the release that added them. Not
# exhaustive: it covers the names people copy from current docs. All were checked to make
# 1.18 refuse to start. Anything else unknown still fails, with the log line in the error.
VERSION_GATED_SETTINGS: dict[str, Version] = {
    "track_extra_parameters": (1, 20, 0),
    "max_prepared_statements": (1, 21, 0),
    "auth_ident_file": (1, 23, 0),
    "max_db_client_connections": (1, 24, 0),
    "max_user_client_connections": (1, 24, 0),
}

# Startup parameters PgBouncer tracks per client and replays on whichever server connection
# the client gets (every release since 1.x; track_extra_parameters, 1.20+, can add more).
# Anything else in a startup packet is refused: "unsupported startup parameter".
TRACKED_STARTUP_PARAMETERS = frozenset(
    {"client_encoding", "DateStyle", "TimeZone", "standard_conforming_strings", "application_name"}
)


def refused_startup_parameter(version: Version, parameter: str, *, in_options: bool) -> str:
    """The error PgBouncer `version` gives a client that sends `parameter` at startup, either as
    a startup parameter of its own (asyncpg, pg8000) or inside libpq's `options` (psycopg,
    psycopg2). Since 1.20 PgBouncer reads `options` and names the setting inside it."""
    if in_options and version < (1, 20, 0):
        return "unsupported startup parameter: options"
    if in_options:
        return f"unsupported startup parameter in options: {parameter}"
    return f"unsupported startup parameter: {parameter}"


def parse_version(text: str) -> Version:
    """'PgBouncer 1.18.0' (the first line of `pgbouncer --version`) -> (1, 18, 0)."""
    match = re.search(r"PgBouncer (\d+)\.(\d+)(?:\.(\d+))?", text)
    if match is None:
        raise BinaryNotFoundError(f"cannot read a PgBouncer version from: {text.strip()!r}")
    major, minor, patch = match.groups()
    return int(major), int(minor), int(patch or 0)


def knows(version: Version, setting: str) -> bool:
    """Whether PgBouncer `version` accepts `setting` in pgbouncer.ini."""
    return version >= VERSION_GATED_SETTINGS.get(setting, (0, 0, 0))


def default_max_prepared_statements(version: Version) -> int:
    """max_prepared_statements when pgbouncer.ini does not set it: 200 since 1.24 (tracking on
    by default), 0 in 1.21-1.23 (the setting exists, tracking is off), absent before 1.21."""
    return 200 if version >= (1, 24, 0) else 0


def immediate_shutdown_signal(version: Version) -> signal.Signals:
    """SIGTERM before 1.23; SIGQUIT since, when SIGTERM became a shutdown that waits for every
    client to disconnect."""
    return signal.SIGQUIT if version >= (1, 23, 0) else signal.SIGTERM
