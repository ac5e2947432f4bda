"""An in-process TCP forwarder on 127.0.0.1: stable address, TLS sidecar and fault injector.

- In front of a replica pair it stands where HAProxy stands in front of Patroni: clients keep
  one host:port while the primary behind it changes (`retarget`).
- With `upstream_tls` it is a Cloud SQL Auth Proxy-style sidecar: the app speaks plaintext to
  127.0.0.1, the proxy speaks verified TLS to the server (PostgreSQL's SSLRequest, then TLS).
- Like Toxiproxy, it injects faults: added latency, cut every connection, refuse new ones.

It is a pipe, never a server: every byte goes to a real PostgreSQL. Each connection is served
by one thread that moves bytes both ways, so a TLS socket is never used by two threads at once.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable

from ..types import LOOPBACK

_ACCEPT_POLL = 0.05  # How often the accept loop checks for close(); not a wait for a condition.
_CHUNK = 65536
# PostgreSQL's pre-startup requests (protocol codes 1234/5679 and 1234/5680) and its replies.
_SSL_REQUEST = struct.pack("!ii", 8, 80877103)
_GSSENC_REQUEST = struct.pack("!ii", 8, 80877104)


class TcpProxy:
    """Forwards each accepted connection to the current target (host, port)."""

    def __init__(
        self,
        target: tuple[str, int],
        *,
        upstream_tls: ssl.SSLContext | None = None,
        upstream_hostname: str | None = None,
    ) -> None:
        self._target = target
        self._upstream_tls = upstream_tls
        self._upstream_hostname = upstream_hostname or target[0]
        self._lock = threading.Lock()
        self._clients: set[socket.socket] = set()
        self._closed = threading.Event()
        self.latency = 0.0
        """Seconds added before each chunk is forwarded, in either direction."""
        self.refusing = False
        """When True, new connections are accepted and closed at once (a dead backend)."""
        self.black_hole = False
        """When True, bytes are read and dropped, both ways, and nothing is closed: a network
        that silently loses everything (a dead route, a firewall dropping packets)."""
        self.upstream_errors: list[str] = []
        """Why upstream connections failed (refused, TLS verification), newest last."""
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
            self.cut()

    def cut(self) -> None:
        """Drop every open connection now (both sides see the connection end)."""
        with self._lock:
            clients, self._clients = self._clients, set()
        for client in clients:
            _shut(client)

    def refuse(self) -> None:
        """Accept and immediately close new connections until restore()."""
        self.refusing = True

    def swallow(self) -> None:
        """Become a black hole (see `black_hole`) until restore(); open connections hang."""
        self.black_hole = True

    def restore(self) -> None:
        """No more faults: no latency, new connections forwarded again, no black hole."""
        self.latency = 0.0
        self.refusing = False
        self.black_hole = False

    def close(self) -> None:
        self._closed.set()
        self._thread.join(5)
        self._listener.close()
        self.cut()

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self.refusing:
                _shut(client)
                continue
            with self._lock:
                self._clients.add(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        try:
            client.settimeout(None)
            upstream = self._open_upstream(client)
            if upstream is not None:
                self._pump(client, upstream)
        finally:
            with self._lock:
                self._clients.discard(client)
            _shut(client)
            if upstream is not None:
                _shut(upstream)

    def _open_upstream(self, client: socket.socket) -> socket.socket | None:
        try:
            upstream = socket.create_connection(self.target, timeout=10)
        except OSError as exc:
            self.upstream_errors.append(f"connect {self.target}: {exc}")
            return None  # Nothing behind us: the client sees its connection closed.
        upstream.settimeout(None)
        if self._upstream_tls is None:
            return upstream
        try:
            _decline_client_encryption(client)
            upstream.sendall(_SSL_REQUEST)
            if upstream.recv(1) != b"S":
                raise ssl.SSLError("the server does not accept TLS")
            return self._upstream_tls.wrap_socket(upstream, server_hostname=self._upstream_hostname)
        except (OSError, ssl.SSLError) as exc:
            self.upstream_errors.append(f"TLS to {self.target}: {exc}")
            _shut(upstream)
            return None

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        peers = {client: upstream, upstream: client}
        # Only a TLS-terminating sidecar rewrites anything: see _AuthRewriter.
        rewriter = _AuthRewriter() if isinstance(upstream, ssl.SSLSocket) else None
        with selectors.DefaultSelector() as selector:
            for sock in peers:
                selector.register(sock, selectors.EVENT_READ)
            while True:
                for key, _ in selector.select():
                    source: socket.socket = key.fileobj  # type: ignore[assignment]
                    rewrite = rewriter.feed if rewriter and source is upstream else None
                    if not self._forward(source, peers[source], rewrite):
                        return

    def _forward(
        self,
        source: socket.socket,
        sink: socket.socket,
        rewrite: Callable[[bytes], bytes] | None = None,
    ) -> bool:
        """Move what `source` has to `sink`; False when either side is gone."""
        try:
            data = source.recv(_CHUNK)
            while isinstance(source, ssl.SSLSocket) and source.pending():
                data += source.recv(source.pending())  # Decrypted bytes select() cannot see.
        except ssl.SSLWantReadError:
            return True
        except OSError:
            return False
        if not data:
            return False
        if self.black_hole:
            return True  # Dropped: the sender's kernel saw it delivered; nobody answers.
        if rewrite is not None:
            data = rewrite(data)
        if self.latency:
            time.sleep(self.latency)  # The injected fault itself.
        try:
            sink.sendall(data)
        except OSError:
            return False
        return True


class _AuthRewriter:
    """Hides SCRAM-SHA-256-PLUS from the client of a TLS-terminating sidecar.

    The server offers channel binding because its leg is TLS; the app's leg is plaintext, and
    libpq then refuses ("server offered SCRAM-SHA-256-PLUS authentication over a non-SSL
    connection"), as it should for a stripped TLS it cannot tell from an attack. Removing the
    mechanism from AuthenticationSASL lets the client choose SCRAM-SHA-256 without binding,
    which the server accepts. Only messages before AuthenticationOk are examined.
    """

    _PLUS = b"SCRAM-SHA-256-PLUS\0"

    def __init__(self) -> None:
        self._buffer = b""
        self._done = False

    def feed(self, data: bytes) -> bytes:
        if self._done:
            return data
        self._buffer += data
        out = b""
        while len(self._buffer) >= 5:
            kind, length = self._buffer[:1], struct.unpack("!i", self._buffer[1:5])[0]
            if len(self._buffer) < 1 + length:
                break  # Wait for the rest of this message.
            message, self._buffer = self._buffer[: 1 + length], self._buffer[1 + length :]
            code = struct.unpack("!i", message[5:9])[0] if kind == b"R" and length >= 8 else None
            if code == 10:  # AuthenticationSASL: a list of mechanisms.
                body = message[5:].replace(self._PLUS, b"")
                message = kind + struct.pack("!i", 4 + len(body)) + body
            out += message
            if code == 0 or kind == b"E":  # AuthenticationOk, or the attempt failed.
                self._done = True
                out, self._buffer = out + self._buffer, b""
                break
        return out


def _decline_client_encryption(client: socket.socket) -> None:
    """The local leg stays plaintext: answer 'N' to a client's SSLRequest or GSSENCRequest,
    leaving its StartupMessage for the pump."""
    while True:
        head = client.recv(8, socket.MSG_PEEK)
        if head not in (_SSL_REQUEST, _GSSENC_REQUEST):
            return
        client.recv(8)
        client.sendall(b"N")


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)  # The raw socket, even under TLS.
    with contextlib.suppress(OSError):
        sock.close()
