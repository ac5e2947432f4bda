"""`set_local` / `aset_local`: several settings for one transaction (SET LOCAL), reverted at
its end, and refused on an AUTOCOMMIT connection, where SET LOCAL would last no statement.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from pytest_pgtopo.recipes.tenancy import search_path_value
from pytest_pgtopo.recipes.transaction_settings import aset_local, set_local

from .support import DEFAULT_PATH


def test_set_local_lasts_one_transaction(pg_sync_engine: sa.Engine) -> None:
    show = sa.text(
        "SELECT current_setting('search_path'), current_setting('statement_timeout'),"
        " current_setting('app.tenant_id', true)"
    )
    with pg_sync_engine.connect() as conn:
        set_local(
            conn,
            {"app.tenant_id": "42"},
            search_path=search_path_value("tenant_b", "public"),
            statement_timeout="2s",
        )
        assert tuple(conn.execute(show).one()) == ('"tenant_b", "public"', "2s", "42")
        conn.commit()
        assert tuple(conn.execute(show).one()) == (DEFAULT_PATH, "30s", "")


def test_set_local_refuses_autocommit(pg_sync_engine: sa.Engine) -> None:
    with (
        pg_sync_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn,
        pytest.raises(ValueError, match="on an AUTOCOMMIT connection"),
    ):
        set_local(conn, statement_timeout=100)


async def test_aset_local_refuses_autocommit(pg_engine: AsyncEngine) -> None:
    async with pg_engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        with pytest.raises(ValueError, match="on an AUTOCOMMIT connection"):
            await aset_local(conn, statement_timeout=100)
