"""`--pgtopo-backend=external`: pg_plain is a server someone else runs, given by its URL.

Only pg_plain can be served this way: the other topologies need servers the plugin starts
and controls (a pooler in front, TLS settings, a replica to promote).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import sqlalchemy

from ..admin import AdminConnection, LoginRefusedError, wait_until_connectable
from ..endpoint import Endpoint
from ..errors import PgtopoError, TopologyUnavailableError
from ..servers.certificates import ServerTls
from ..tls import TlsClient
from .base import PgBouncerHandle, PostgresHandle

_CONNECT_TIMEOUT = 30.0
_URL_CHANNELS = "--pgtopo-external-url (ini pgtopo_external_url, env PGTOPO_EXTERNAL_URL)"
# What to change when the server refuses the login, by SQLSTATE (admin.FINAL_LOGIN_ERRORS).
_LOGIN_FIXES = {
    "28P01": f"check the user and password in {_URL_CHANNELS}",
    "28000": (
        "the server's pg_hba.conf admits no such login from this host, or the role may not log "
        f"in: allow it there (the role needs LOGIN and CREATEDB), or use another user in "
        f"{_URL_CHANNELS}"
    ),
    "3D000": f"name a database that exists (postgres, say) in {_URL_CHANNELS}",
}


def endpoint_from_url(url: str) -> Endpoint:
    """An Endpoint from `postgresql://user:password@host:port/dbname` (plain TCP)."""
    parsed = sqlalchemy.make_url(url)
    if not (parsed.host and parsed.username):
        raise PgtopoError(
            f"the external URL {parsed.render_as_string()} needs at least a user and a host, "
            "e.g. postgresql://app:secret@db.internal:5432/postgres"
        )
    return Endpoint(
        parsed.host,
        parsed.port or 5432,
        parsed.username,
        parsed.password or "",
        parsed.database or "postgres",
    )


def masked_url(endpoint: Endpoint) -> str:
    """The server's URL as a person may read it in a log: the password masked."""
    return f"postgresql://{endpoint.user}:***@{endpoint.host}:{endpoint.port}/{endpoint.dbname}"


class ExternalServer:
    """A server the plugin does not run: only a connection to it. Per-test databases need the
    CREATEDB privilege; stopping it only closes that connection."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        try:
            self.admin: AdminConnection = wait_until_connectable(endpoint, timeout=_CONNECT_TIMEOUT)
        except LoginRefusedError as exc:  # Final: retrying a wrong password cannot help.
            error = exc.error
            raise PgtopoError(
                f"the external server {masked_url(endpoint)} refused the login: {error.message} "
                f"(SQLSTATE {error.sqlstate}); {_LOGIN_FIXES.get(error.sqlstate or '', '')}"
            ) from None
        self.client_tls: TlsClient | None = None

    @property
    def label(self) -> str:
        return f"external server {self.endpoint.host}:{self.endpoint.port}"

    @property
    def pid(self) -> int | None:
        return None  # Not a process of ours.

    def is_running(self) -> bool:
        return True  # Not ours to know: a failing drop is reported.

    def log_tail(self, lines: int = 20) -> str:
        return ""  # Its log is on another machine.

    def stop_process(self, mode: str = "fast") -> None:
        raise PgtopoError(f"{self.label} is not run by pytest-pgtopo; it cannot be stopped")

    def stop(self) -> None:
        self.admin.close()


class ExternalBackend:
    """Serves pg_plain from the server at `url`; starts nothing."""

    def __init__(self, url: str) -> None:
        self.where = endpoint_from_url(url)

    def describe(self) -> str:
        return f"external ({self.where.host}:{self.where.port})"

    def unavailable(self, topology: str) -> str | None:
        if topology == "plain":
            return None
        return (
            f"the {topology} topology needs servers pytest-pgtopo starts itself; "
            "--pgtopo-backend=external provides pg_plain only"
        )

    def start_postgres(
        self,
        name: str,
        *,
        settings: Mapping[str, str] | None = None,
        hba: str | None = None,
        tls: ServerTls | None = None,
        client_tls: TlsClient | None = None,
    ) -> ExternalServer:
        if settings or hba or tls or client_tls:
            raise TopologyUnavailableError(
                f"server {name!r} needs its own settings; "
                "--pgtopo-backend=external provides pg_plain only"
            )
        return ExternalServer(self.where)

    def start_standby(self, name: str, primary: PostgresHandle, slot: str) -> PostgresHandle:
        raise TopologyUnavailableError(self._refusal(f"a standby {name!r}"))

    def check_pgbouncer_settings(self, settings: Mapping[str, str]) -> None:
        raise TopologyUnavailableError(self._refusal("PgBouncer"))

    def start_pgbouncer(
        self,
        name: str,
        upstream: Endpoint,
        settings: Mapping[str, str],
        *,
        tls: ServerTls | None = None,
        client_tls: TlsClient | None = None,
    ) -> PgBouncerHandle:
        raise TopologyUnavailableError(self._refusal("PgBouncer"))

    def client_files(self, name: str, files: Mapping[str, bytes]) -> dict[str, Path]:
        raise TopologyUnavailableError(self._refusal("TLS files"))

    def keep_report(self) -> list[str]:
        return []  # Nothing of ours runs there; kept databases are listed by the session.

    def close(self) -> None:
        pass

    @staticmethod
    def _refusal(what: str) -> str:
        return f"{what} needs servers pytest-pgtopo starts itself; --pgtopo-backend=external provides pg_plain only"
