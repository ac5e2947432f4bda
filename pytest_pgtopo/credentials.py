"""Short-lived database credentials on a real server, standing in for RDS IAM auth tokens.

An RDS IAM token is a password that stops working about 15 minutes after it was made. An engine
that put one token into its URL works until the pool needs a new connection after that, then
fails with "password authentication failed". `TokenIssuer` reproduces this on any PostgreSQL
server: a LOGIN role whose password is set with `VALID UNTIL`, so tests can check that the
application fetches a fresh token for every new connection (`recipes.iam.fresh_token_on_connect`).
"""

from __future__ import annotations

import dataclasses
import secrets
import threading
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from types import TracebackType

from .admin import AdminConnection
from .endpoint import Endpoint
from .quoting import quote_ident, quote_literal
from .servers.process import cleanup_on_error


class TokenIssuer:
    """A non-superuser LOGIN role on `database` whose password expires `ttl` seconds after issue.

    `superuser` is an endpoint with the rights to create roles (a topology's `.primary`, or
    `pg_plain_database`); `database` defaults to its database. The role gets CONNECT on the
    database, USAGE on its `public` schema and membership in the `member_of` roles (grant your
    application's privileges to one of those).

    Unlike RDS, where every token is independent, the role has one password: `issue()` makes
    every earlier token stop working at once. Two connections that fetch tokens concurrently
    can therefore invalidate each other's before they log in; what the issuer lets a test prove
    is that each new connection uses a fresh token. The server checks a password only at login:
    connections already open stay open after their token expired, as on RDS.
    """

    def __init__(
        self,
        superuser: Endpoint,
        database: str | None = None,
        *,
        role: str | None = None,
        member_of: Sequence[str] = (),
    ) -> None:
        self.database = database or superuser.dbname
        self.role = role or f"pgtopo_token_{secrets.token_hex(4)}"
        self._base = dataclasses.replace(superuser, dbname=self.database)
        self._admin = AdminConnection(self._base)
        self._lock = threading.Lock()
        self.expires_at: datetime | None = None
        """When the latest token stops working (server clock, UTC); None before the first."""
        ident = quote_ident(self.role)
        with cleanup_on_error() as on_error:
            on_error(self._admin.close)
            self._admin.execute(f"CREATE ROLE {ident} LOGIN NOSUPERUSER PASSWORD NULL")
            self._admin.execute(
                f"GRANT CONNECT ON DATABASE {quote_ident(self.database)} TO {ident}"
            )
            self._admin.execute(f"GRANT USAGE ON SCHEMA public TO {ident}")
            for group in member_of:
                self._admin.execute(f"GRANT {quote_ident(group)} TO {ident}")

    def issue(self, ttl: float) -> str:
        """A fresh random password, valid for `ttl` seconds from now on the server's clock.

        Every token issued before stops working immediately (one role, one password).
        """
        token = secrets.token_urlsafe(32)
        with self._lock:
            now = float(self._admin.scalar("SELECT extract(epoch FROM clock_timestamp())"))
            expires = datetime.fromtimestamp(now, UTC) + timedelta(seconds=ttl)
            # VALID UNTIL takes a literal, not an expression; ISO 8601 parses under any DateStyle.
            self._admin.execute(
                f"ALTER ROLE {quote_ident(self.role)} PASSWORD {quote_literal(token)} "
                f"VALID UNTIL {quote_literal(expires.isoformat())}"
            )
            self.expires_at = expires
        return token

    def endpoint(self, token: str) -> Endpoint:
        """Where to connect as the role with `token` as the password."""
        return dataclasses.replace(self._base, user=self.role, password=token)

    def close(self) -> None:
        """Drop the role (and its privileges and objects in the database), close the connection."""
        try:
            ident = quote_ident(self.role)
            self._admin.execute(f"DROP OWNED BY {ident}")
            self._admin.execute(f"DROP ROLE {ident}")
        finally:
            self._admin.close()

    def __enter__(self) -> TokenIssuer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
