"""Short-lived passwords (RDS IAM auth tokens): a fresh one for every new connection.

The mistake this recipe avoids: putting one token into the engine's URL. The engine then works
until the token expires and the pool opens its next connection, which the server refuses with
"password authentication failed". SQLAlchemy's `do_connect` event runs just before each new
DBAPI connection and may change its arguments; every supported driver (asyncpg, psycopg,
psycopg2, pg8000) takes the password as `password`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine


def fresh_token_on_connect(
    engine: sqlalchemy.Engine | AsyncEngine, fetch_token: Callable[[], str]
) -> None:
    """Call `fetch_token()` for every new DBAPI connection of `engine` and log in with it.

    The password in the engine's URL, if any, is ignored. `fetch_token` runs synchronously, on
    the event loop's thread for an AsyncEngine: keep it fast (boto3's
    `generate_db_auth_token` signs locally, without a network call), or cache its result for
    less than the token's lifetime. Connections already in the pool are not affected: the
    server checks a password only at login.
    """
    sync_engine = engine.sync_engine if isinstance(engine, AsyncEngine) else engine

    @event.listens_for(sync_engine, "do_connect")
    def provide_token(
        dialect: Any, connection_record: Any, cargs: Any, cparams: dict[str, Any]
    ) -> None:
        cparams["password"] = fetch_token()
