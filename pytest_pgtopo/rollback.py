"""Rollback isolation: every test shares one database and undoes its work.

Each engine holds exactly one connection inside an outer transaction that is rolled back
after the test, and the application's own BEGIN/COMMIT/ROLLBACK become SAVEPOINT/RELEASE/
ROLLBACK TO. Cheaper than a database per test, but a test cannot use AUTOCOMMIT or see its
own work from a second connection.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy

from . import dbapi

_UNIT_SAVEPOINT = "pgtopo_unit"


def rollback_engine_kwargs() -> dict[str, Any]:
    """Pool settings for rollback mode: exactly one connection, never reset by the pool.

    No pre-ping either: psycopg's ping switches the connection to autocommit, which it refuses
    mid-transaction, and the one pinned connection cannot be replaced without losing the test's work.
    """
    return {"pool_size": 1, "max_overflow": 0, "pool_reset_on_return": None, "pool_pre_ping": False}


def begin_outer_transaction(connection: sqlalchemy.Connection) -> None:
    """Open the outer transaction on the pool's only connection, then turn the dialect's
    begin/commit/rollback into savepoint operations inside it.

    Call with a Connection from an engine made with rollback_engine_kwargs(); for an
    AsyncEngine, through AsyncConnection.run_sync(). The dialect's first connect (which calls
    the real rollback) has happened by now, so replacing its methods is safe.
    """
    dbapi_connection = connection.connection.dbapi_connection
    dbapi.execute(
        dbapi_connection, "SELECT 1"
    )  # Every driver starts its implicit transaction here.
    # Instance attributes shadow the dialect class's methods for this engine only.
    for method, replacement in (
        ("do_begin", _begin_unit),
        ("do_commit", _commit_unit),
        ("do_rollback", _rollback_unit),
    ):
        setattr(connection.dialect, method, replacement)


def rollback_outer_transaction(connection: sqlalchemy.Connection) -> None:
    """Undo everything the test did: the driver's real rollback of the outer transaction."""
    dbapi_connection = connection.connection.dbapi_connection
    assert dbapi_connection is not None
    dbapi_connection.rollback()


def _begin_unit(dbapi_connection: Any) -> None:
    dbapi.execute(dbapi_connection, f"SAVEPOINT {_UNIT_SAVEPOINT}")


def _commit_unit(dbapi_connection: Any) -> None:
    dbapi.execute(dbapi_connection, f"RELEASE SAVEPOINT {_UNIT_SAVEPOINT}")


def _rollback_unit(dbapi_connection: Any) -> None:
    dbapi.execute(dbapi_connection, f"ROLLBACK TO SAVEPOINT {_UNIT_SAVEPOINT}")
    dbapi.execute(dbapi_connection, f"RELEASE SAVEPOINT {_UNIT_SAVEPOINT}")
