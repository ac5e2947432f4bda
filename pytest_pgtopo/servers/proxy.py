"""An in-process TCP forwarder on 127.0.0.1: a stable address in front of a moving target.

It stands where HAProxy stands in front of Patroni: clients keep one host:port while the
server behind it changes. It is a pipe, never a server: every byte goes to a real PostgreSQL.
"""

from __future__ import annotations

import contextlib
import socket
import threading

from .postgres import LOOPBACK

_ACCEPT_POLL = 0.05  # How often the accept loop checks for close(); not a wait for a condition.
_CHUNK = 65536


class TcpProxy:
    """Forwards each accepted connection to the current target (host, port)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self._target = target
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._closed = threading.Event()
        self._listener = socket.create_server((LOOPBACK, 0))
        self._listener.settimeout(_ACCEPT_POLL)
        self.host = LOOPBACK
        self.port: int = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept_loop, name="pgtopo-proxy", daemon=True)
        self._thread.start()

    @property
    def target(self) -> tuple[str, int]:
        with self._lock:
            return self._target

    def retarget(self, target: tuple[str, int], *, drop_existing: bool = True) -> None:
        """Send new connections to `target`; by default cut the ones open now, as a load
        balancer does when its health check marks the old backend down."""
        with self._lock:
            self._target = target
        if drop_existing:
            self.drop_connections()

    def drop_connections(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            _shut(sock)

    def close(self) -> None:
        self._closed.set()
        self._thread.join(5)
        self._listener.close()
        self.drop_connections()

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                _shut(client)  # Nothing behind us: refuse, as a load balancer with no backend.
                continue
            upstream.settimeout(None)
            client.settimeout(None)
            with self._lock:
                self._sockets.update((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(_CHUNK):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._sockets.difference_update((source, sink))
            _shut(source)
            _shut(sink)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
