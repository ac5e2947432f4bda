"""The plugin's own autocommit connection for admin work (CREATE DATABASE, ALTER ROLE, waits).

It uses the first installed sync driver in drivers.ADMIN_DRIVER_ORDER; pg8000 is a dependency of
the package, so one is always there. Tests' engines never share this connection.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import dbapi, drivers
from .endpoint import Endpoint
from .errors import PgtopoError
from .waiting import wait_until

# SQLSTATEs of a login the server refused for good: retrying cannot help, so waits stop at once.
FINAL_LOGIN_ERRORS = {
    "28P01": "invalid_password",
    "28000": "invalid_authorization_specification",  # No pg_hba.conf entry, role cannot log in.
    "3D000": "invalid_catalog_name",  # The database does not exist.
}


@dataclass(frozen=True)
class ServerError:
    """What the server said in an ErrorResponse, whichever admin driver carried it."""

    sqlstate: str | None
    message: str
    detail: str | None = None
    hint: str | None = None
    position: int | None = None
    """1-based, in characters of the query string as sent (a whole script, for run_script)."""


def server_error(exc: BaseException) -> ServerError | None:
    """The server's error fields from an admin driver's exception; None if the server said
    nothing (a refused TCP connection, a timeout) or the driver does not pass it on."""
    fields = exc.args[0] if exc.args else None
    if isinstance(fields, dict) and "M" in fields:
        # pg8000: DatabaseError(dict) holding the ErrorResponse's one-letter fields.
        position = fields.get("P")
        return ServerError(
            fields.get("C"),
            str(fields["M"]),
            fields.get("D"),
            fields.get("H"),
            int(position) if position else None,
        )
    diag = getattr(exc, "diag", None)  # psycopg and psycopg2: a Diagnostic per error.
    if diag is not None and diag.message_primary:
        position = diag.statement_position
        return ServerError(
            diag.sqlstate,
            diag.message_primary,
            diag.message_detail,
            diag.message_hint,
            int(position) if position else None,
        )
    return None


class LoginRefusedError(PgtopoError):
    """The server refused the login for good (FINAL_LOGIN_ERRORS): a wrong password, user or
    database. `.error` is what the server said."""

    def __init__(self, endpoint: Endpoint, error: ServerError) -> None:
        super().__init__(
            f"{endpoint.host}:{endpoint.port} refused the login: {error.message} "
            f"(SQLSTATE {error.sqlstate})"
        )
        self.error = error


def refused_login(endpoint: Endpoint, exc: BaseException) -> ServerError | None:
    """What the server said, if `exc` (from connecting to `endpoint`) is a final refusal.

    psycopg and psycopg2 get no SQLSTATE from libpq for a failed login, only a message in the
    server's language; pg8000 (a dependency, so installed) reads the ErrorResponse itself, so
    it is asked once to log in the same way and say why not.
    """
    error = server_error(exc)
    if (error is None or error.sqlstate is None) and admin_driver() != "pg8000":
        error = _login_error_as_pg8000_sees_it(endpoint)
    if error is not None and error.sqlstate in FINAL_LOGIN_ERRORS:
        return error
    return None


def _login_error_as_pg8000_sees_it(endpoint: Endpoint) -> ServerError | None:
    pg8000 = drivers.get("pg8000")
    if not pg8000.is_installed() or pg8000.connect_autocommit is None:
        return None
    try:
        conn = pg8000.connect_autocommit(endpoint.dbapi_kwargs("pg8000"))
    except Exception as exc:  # noqa: BLE001 - classified below, never raised.
        return server_error(exc)
    with contextlib.suppress(Exception):
        conn.close()
    return None  # It got in after all: a passing condition; the caller tries again.


def admin_driver() -> str:
    for name in drivers.ADMIN_DRIVER_ORDER:
        if drivers.get(name).is_installed():
            return name
    raise PgtopoError(
        "no synchronous driver is installed for pytest-pgtopo's admin connection; "
        "install one with: pip install 'pytest-pgtopo[psycopg]'"
    )


class AdminConnection:
    """A thread-safe autocommit connection; every call is one statement."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.driver = admin_driver()
        connect = drivers.get(self.driver).connect_autocommit
        assert connect is not None
        self._conn = connect(endpoint.dbapi_kwargs(self.driver))
        self._lock = threading.Lock()

    def execute(self, sql: str) -> None:
        with self._lock:
            dbapi.execute(self._conn, sql)

    def run_script(self, sql: str) -> None:
        """Run a multi-statement SQL script (a schema file, say)."""
        with self._lock:
            drivers.run_script(self.driver, self._conn, sql)

    def scalar(self, sql: str) -> Any:
        with self._lock:
            return dbapi.scalar(self._conn, sql)

    def rows(self, sql: str) -> list[dict[str, Any]]:
        with self._lock:
            return dbapi.rows(self._conn, sql)

    def close(self) -> None:
        # The server may already be gone; closing is best effort.
        with contextlib.suppress(Exception):
            self._conn.close()


def wait_until_connectable(
    endpoint: Endpoint, *, timeout: float, alive: Callable[[], bool] | None = None
) -> AdminConnection:
    """Poll until a real connection succeeds; `alive()` returning False aborts early.

    Without `alive` (a server someone else runs), a login the server refuses for good (wrong
    password, user or database: FINAL_LOGIN_ERRORS) raises LoginRefusedError at once. With it
    (a server process of ours, starting), such a refusal is retried: until ours has bound the
    port, another server may be answering there.
    """
    connected: list[AdminConnection] = []
    failures: list[Exception] = []

    def ready() -> bool:
        try:
            connected.append(AdminConnection(endpoint))
            return True
        except Exception as exc:  # Each driver raises its own connect errors.
            failures.append(exc)
            if alive is None and (refusal := refused_login(endpoint, exc)) is not None:
                raise LoginRefusedError(endpoint, refusal) from exc
        if alive is not None and not alive():
            raise PgtopoError(f"the server exited before accepting connections: {failures[-1]}")
        return False

    wait_until(
        ready,
        timeout=timeout,
        explain=lambda: (
            f"no connection to {endpoint.host}:{endpoint.port} after {timeout:.0f} s: "
            f"{failures[-1]}"
        ),
    )
    return connected[0]
