"""`pg_tls`: a server that accepts TLS only, with a certificate from a throwaway trustme CA."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..audit import Target
from ..backends.base import Backend, PostgresHandle
from ..servers.certificates import DEFAULT_HOSTNAMES, issue_certificates
from ..servers.initdb_cache import SUPERUSER
from ..tls import TlsClient
from ..types import LOOPBACK
from .base import Topology

# TLS or nothing: plaintext TCP is rejected outright, not merely unauthenticated.
_HBA = """\
# TYPE     DATABASE  USER  ADDRESS       METHOD
local      all       all                 scram-sha-256
hostssl    all       all   127.0.0.1/32  {method}
hostssl    all       all   ::1/128       {method}
hostnossl  all       all   all           reject
"""


@dataclass(frozen=True)
class TlsOptions:
    client_certificates: bool = False
    """mTLS: the server also demands a client certificate whose CN is the user
    (`clientcert=verify-full`); the topology then has .client_cert_path and .client_key_path."""
    hostnames: tuple[str, ...] = DEFAULT_HOSTNAMES
    """Names in the server certificate. Leave out 127.0.0.1 to see verify-full refuse it."""


class TlsTopology(Topology):
    """`.primary` verifies the server with verify-full against `.ca_path` (verify-ca when the
    certificate does not name 127.0.0.1, so the plugin itself can still connect)."""

    fixture = "pg_tls"

    def __init__(self, server: PostgresHandle, options: TlsOptions) -> None:
        super().__init__(server)
        self.options = options

    @classmethod
    def start(cls, backend: Backend, options: TlsOptions | None = None) -> TlsTopology:
        options = options or TlsOptions()
        material = issue_certificates(
            hostnames=options.hostnames,
            client_user=SUPERUSER if options.client_certificates else None,
            verify_clients=options.client_certificates,
        )
        files = backend.client_files("tls-certs", material.client_files())
        client_tls = TlsClient(
            files["ca.pem"],
            "verify-full" if LOOPBACK in options.hostnames else "verify-ca",
            files.get("client.crt"),
            files.get("client.key"),
        )
        method = "scram-sha-256"
        if options.client_certificates:
            method += " clientcert=verify-full"
        server = backend.start_postgres(
            "tls", hba=_HBA.format(method=method), tls=material.server, client_tls=client_tls
        )
        return cls(server, options)

    @property
    def ca_path(self) -> Path:
        """PEM of the CA that signed the server (and client) certificates."""
        assert self.server.client_tls is not None
        return self.server.client_tls.ca_path

    @property
    def client_cert_path(self) -> Path | None:
        assert self.server.client_tls is not None
        return self.server.client_tls.cert_path

    @property
    def client_key_path(self) -> Path | None:
        assert self.server.client_tls is not None
        return self.server.client_tls.key_path

    def audit_targets(self) -> dict[int, Target]:
        return {self.primary.port: Target(tls=True)}

    def __repr__(self) -> str:
        return f"<TlsTopology primary={self.primary.host}:{self.primary.port} ca={self.ca_path}>"
