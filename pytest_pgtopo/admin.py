"""The plugin's own autocommit connection for admin work (CREATE DATABASE, ALTER ROLE, waits).

It uses the first installed sync driver in drivers.ADMIN_DRIVER_ORDER; pg8000 is a dependency of
the package, so one is always there. Tests' engines never share this connection.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

from . import dbapi, drivers
from .endpoint import Endpoint
from .errors import PgtopoError
from .waiting import wait_until


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
    """Poll until a real connection succeeds; `alive()` returning False aborts early."""
    connected: list[AdminConnection] = []
    failures: list[Exception] = []

    def ready() -> bool:
        try:
            connected.append(AdminConnection(endpoint))
            return True
        except Exception as exc:  # noqa: BLE001 - each driver raises its own connect errors.
            failures.append(exc)
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
