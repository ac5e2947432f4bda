"""Certificates from a throwaway CA (trustme) for TLS topologies, as bytes.

Who writes them where is the backend's business: server files must belong to the server's
OS user with the key at 0600 (PostgreSQL and PgBouncer refuse a key with group or world
access; trustme would write 0644), and client files to the user running pytest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import trustme

from ..types import LOOPBACK

DEFAULT_HOSTNAMES = ("localhost", LOOPBACK, "::1")


@dataclass(frozen=True)
class ServerTls:
    """What a server needs to accept TLS: its certificate chain and key (PEM), and the CA that
    client certificates must chain to (None: no client certificates are checked)."""

    cert_pem: bytes
    key_pem: bytes = field(repr=False)
    client_ca_pem: bytes | None = None


@dataclass(frozen=True)
class TlsMaterial:
    """A CA, a server certificate it signed, and optionally a client certificate (PEM bytes)."""

    ca_pem: bytes
    server: ServerTls
    client_cert_pem: bytes | None = None
    client_key_pem: bytes | None = None

    def client_files(self) -> dict[str, bytes]:
        """The files a client needs, by name: ca.pem, and client.crt/client.key if any."""
        files = {"ca.pem": self.ca_pem}
        if self.client_cert_pem is not None and self.client_key_pem is not None:
            files.update({"client.crt": self.client_cert_pem, "client.key": self.client_key_pem})
        return files


def issue_certificates(
    *,
    hostnames: Sequence[str] = DEFAULT_HOSTNAMES,
    client_user: str | None = None,
    verify_clients: bool = False,
) -> TlsMaterial:
    """A CA and a server certificate for `hostnames`; with `client_user` also a client
    certificate whose CN is that database user (what `clientcert=verify-full` checks).
    `verify_clients` makes the server trust the CA for client certificates."""
    ca = trustme.CA(organization_name="pytest-pgtopo test CA")
    ca_pem = ca.cert_pem.bytes()
    issued = ca.issue_cert(*hostnames)
    server = ServerTls(
        cert_pem=_chain(issued),
        key_pem=issued.private_key_pem.bytes(),
        client_ca_pem=ca_pem if verify_clients else None,
    )
    if client_user is None:
        return TlsMaterial(ca_pem, server)
    client = ca.issue_cert(f"{client_user}.client.invalid", common_name=client_user)
    return TlsMaterial(ca_pem, server, _chain(client), client.private_key_pem.bytes())


def _chain(issued: trustme.LeafCert) -> bytes:
    return b"".join(blob.bytes() for blob in issued.cert_chain_pems)
