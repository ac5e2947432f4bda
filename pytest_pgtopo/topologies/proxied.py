"""An endpoint reached through the in-process proxy: a TLS sidecar, or a fault injector."""

from __future__ import annotations

import dataclasses

from ..endpoint import Endpoint
from ..servers.proxy import TcpProxy


class ProxiedEndpoint:
    """`upstream`, reached through a TcpProxy on 127.0.0.1.

    With `tls_upstream=True` it is a Cloud SQL Auth Proxy-style sidecar: `.endpoint` is
    plaintext (the app needs no TLS settings) and the proxy verifies the server with the
    upstream endpoint's TLS settings. Otherwise bytes pass untouched (TLS, if any, stays end to
    end). Either way `.proxy` injects faults: `latency`, `cut()`, `refuse()`, `restore()`.
    """

    def __init__(self, upstream: Endpoint, *, tls_upstream: bool = False) -> None:
        if tls_upstream and upstream.tls is None:
            raise ValueError(
                f"{upstream.host}:{upstream.port} has no TLS settings to verify it with"
            )
        self.upstream = upstream
        context = upstream.tls.ssl_context() if tls_upstream and upstream.tls else None
        self.proxy = TcpProxy((upstream.host, upstream.port), upstream_tls=context)
        self.endpoint = dataclasses.replace(
            upstream,
            host=self.proxy.host,
            port=self.proxy.port,
            tls=None if tls_upstream else upstream.tls,
        )

    def cut(self) -> None:
        self.proxy.cut()

    def refuse(self) -> None:
        self.proxy.refuse()

    def restore(self) -> None:
        self.proxy.restore()

    def close(self) -> None:
        self.proxy.close()

    def __repr__(self) -> str:
        return (
            f"<ProxiedEndpoint 127.0.0.1:{self.proxy.port} -> "
            f"{self.upstream.host}:{self.upstream.port}>"
        )
