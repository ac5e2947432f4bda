"""How a client verifies a server over TLS: one value object every driver's spelling reads."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

TlsMode = Literal["verify-full", "verify-ca", "require"]


@dataclass(frozen=True)
class TlsClient:
    """Client-side TLS: which CA to trust, how strictly, and an optional client certificate.

    `verify-full` (the default) checks the chain and that the certificate names the host;
    `verify-ca` only the chain; `require` encrypts without verifying anything, which protects
    against eavesdropping but not against a man in the middle.
    """

    ca_path: Path
    mode: TlsMode = "verify-full"
    cert_path: Path | None = None
    key_path: Path | None = None
    direct: bool = False
    """Start TLS at once (PostgreSQL 17+: `sslnegotiation=direct`, ALPN `postgresql`) instead of
    asking with an SSLRequest first: one round trip less. Servers before 17 refuse it."""

    def ssl_context(self) -> ssl.SSLContext:
        """An SSLContext for drivers that take one (asyncpg, pg8000)."""
        context = ssl.create_default_context(cafile=str(self.ca_path))
        if self.mode != "verify-full":
            context.check_hostname = False
        if self.mode == "require":
            context.verify_mode = ssl.CERT_NONE
        if self.cert_path is not None:
            context.load_cert_chain(str(self.cert_path), str(self.key_path or self.cert_path))
        if self.direct:  # PostgreSQL 17+ accepts a direct TLS connection only with this ALPN.
            context.set_alpn_protocols(["postgresql"])
        return context

    def libpq_params(self) -> dict[str, str]:
        """sslmode and friends, for libpq drivers (psycopg 3, psycopg2)."""
        params: dict[str, str] = {"sslmode": self.mode}
        if self.direct:  # libpq 17+.
            params["sslnegotiation"] = "direct"
        # libpq quietly upgrades `require` to verify-ca when given a root certificate.
        if self.mode != "require":
            params["sslrootcert"] = str(self.ca_path)
        if self.cert_path is not None:
            params["sslcert"] = str(self.cert_path)
            params["sslkey"] = str(self.key_path or self.cert_path)
        return params
