"""Certificates from a throwaway CA (trustme) for TLS topologies.

Server files belong to the server's OS user with the key at 0600 (PostgreSQL and PgBouncer
refuse a key with group or world access; trustme writes 0644). Client files belong to the user
running pytest, since libpq checks its key the same way.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import trustme

from ..runners.local import OsUser

DEFAULT_HOSTNAMES = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class CertificateFiles:
    ca_path: Path
    server_cert: Path
    server_key: Path
    client_cert: Path | None
    client_key: Path | None


def issue_certificates(
    directory: Path,
    server_user: OsUser,
    *,
    hostnames: Sequence[str] = DEFAULT_HOSTNAMES,
    client_user: str | None = None,
) -> CertificateFiles:
    """A CA, a server certificate for `hostnames`, and with `client_user` a client certificate
    whose CN is that database user (what `clientcert=verify-full` checks)."""
    ca = trustme.CA(organization_name="pytest-pgtopo test CA")
    ca_path = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    ca_path.chmod(0o644)

    server = ca.issue_cert(*hostnames)
    server_cert, server_key = directory / "server.crt", directory / "server.key"
    _write(server_cert, b"".join(blob.bytes() for blob in server.cert_chain_pems), 0o644)
    _write(server_key, server.private_key_pem.bytes(), 0o600)
    for path in (server_cert, server_key):
        os.chown(path, server_user.uid, server_user.gid)

    client_cert = client_key = None
    if client_user is not None:
        client = ca.issue_cert(f"{client_user}.client.invalid", common_name=client_user)
        client_cert, client_key = directory / "client.crt", directory / "client.key"
        _write(client_cert, b"".join(blob.bytes() for blob in client.cert_chain_pems), 0o644)
        _write(client_key, client.private_key_pem.bytes(), 0o600)
    return CertificateFiles(ca_path, server_cert, server_key, client_cert, client_key)


def _write(path: Path, data: bytes, mode: int) -> None:
    path.write_bytes(data)
    path.chmod(mode)
