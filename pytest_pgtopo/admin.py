"""The plugin's own autocommit connection for admin work (CREATE DATABASE, ALTER ROLE, waits).

It uses the first installed sync driver in drivers.ADMIN_DRIVER_ORDER; pg8000 is a dependency of
the package, so one is always there. Tests' engines never share this connection.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

from . import dbapi, drivers
from .endpoint import Endpoint
from .errors import PgtopoError


def admin_driver() -> str:
    for name in drivers.ADMIN_DRIVER_ORDER:
        if drivers.get(name).is_installed():
            return name
    raise PgtopoError(
        "no synchronous driver is installed for pytest-pgtopo's admin connection; "
        "install one with: pip install 'pytest-pgtopo[psycopg]'"
    )


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


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

    def close(self) -> None:
        # The server may already be gone; closing is best effort.
        with contextlib.suppress(Exception):
            self._conn.close()


def wait_until_connectable(
    endpoint: Endpoint,
    *,
    timeout: float,
    alive: Callable[[], bool] | None = None,
    interval: float = 0.005,
) -> AdminConnection:
    """Poll until a real connection succeeds; `alive()` returning False aborts early.

    Polls fast at first (a server is usually ready in ~50 ms) and backs off to 100 ms.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            return AdminConnection(endpoint)
        except Exception as exc:  # noqa: BLE001 - each driver raises its own connect errors.
            last = exc
        if alive is not None and not alive():
            raise PgtopoError(f"the server exited before accepting connections: {last}")
        if time.monotonic() > deadline:
            raise PgtopoError(
                f"no connection to {endpoint.host}:{endpoint.port} after {timeout:.0f} s: {last}"
            )
        time.sleep(interval)
        interval = min(interval * 1.5, 0.1)
