"""A tiny health responder beside a PostgreSQL node, for HAProxy's agent-check.

It plays the part of Patroni's REST API (`GET /primary`, `GET /replica`) in HAProxy's simpler
agent protocol: HAProxy connects, sends `primary` or `replica`, and reads one line back: `up`
when the node itself says it is in that role (`SELECT pg_is_in_recovery()` on the node), else
`down`. A node that cannot be reached is `down`. It never decides roles; the node does.

One daemon thread per responder, in the pytest process: it dies with pytest, and HAProxy (a
process the watchdog stops) treats an unreachable agent as "no opinion", never as "up".
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable

from ..admin import AdminConnection
from ..endpoint import Endpoint
from ..types import LOOPBACK

_ACCEPT_POLL = 0.05  # How often the accept loop checks for close(); not a wait for a condition.


class HealthResponder:
    """Answers HAProxy's agent-check for the node at `endpoint()` (called on each check, so it
    follows a node restarted on the same address)."""

    def __init__(self, node: Callable[[], Endpoint]) -> None:
        self._node = node
        self._conn: AdminConnection | None = None
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self.forced: str | None = None
        """An answer that overrides the node's ('down', 'drain', 'maint'), for maintenance."""
        self.answers = 0
        """How many checks it has answered (a test can see HAProxy is asking)."""
        self._listener = socket.create_server((LOOPBACK, 0))
        self._listener.settimeout(_ACCEPT_POLL)
        self.port: int = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, name="pgtopo-health", daemon=True)
        self._thread.start()

    def role(self) -> str | None:
        """'primary' or 'replica' as the node says now; None if it cannot be asked."""
        with self._lock:
            for _attempt in range(2):  # A stale connection (node restarted): reconnect once.
                try:
                    if self._conn is None:
                        self._conn = AdminConnection(self._node())
                    in_recovery = self._conn.scalar("SELECT pg_is_in_recovery()")
                    return "replica" if in_recovery else "primary"
                except Exception:  # noqa: BLE001 - any failure means "cannot ask": down.
                    self._drop()
            return None

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def answer(self, asked: str) -> str:
        if self.forced is not None:
            return self.forced
        return "up" if self.role() == asked.strip() else "down"

    def _serve(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with client, contextlib.suppress(OSError):
                client.settimeout(2)
                asked = client.recv(64).decode(errors="replace")
                client.sendall(f"{self.answer(asked)}\n".encode())
                self.answers += 1

    def close(self) -> None:
        self._closed.set()
        self._thread.join(5)
        self._listener.close()
        with self._lock:
            self._drop()
