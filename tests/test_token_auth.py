"""Short-lived tokens (RDS IAM auth), on a real server, for every driver: an engine with one
token in its URL stops opening connections once the token expired (the cheatsheet's warning,
shown biting), while an engine with the `do_connect` hook (`fresh_token_on_connect`) keeps
connecting. The issuer that stands in for RDS is checked first.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from pytest_pgtopo import Endpoint, create_async_engine, create_engine, drivers
from pytest_pgtopo.admin import AdminConnection
from pytest_pgtopo.credentials import TokenIssuer
from pytest_pgtopo.recipes.iam import fresh_token_on_connect
from pytest_pgtopo.topologies.plain import PlainTopology

TTL = 1.0
REFUSED = "password authentication failed"
# What SQLAlchemy raises for the refused login: an `except OperationalError` misses two drivers.
REFUSED_AS: dict[str, type[sa.exc.DBAPIError]] = {
    "psycopg": sa.exc.OperationalError,
    "psycopg2": sa.exc.OperationalError,
    "pg8000": sa.exc.ProgrammingError,  # {'C': '28P01', 'M': 'password authentication failed ...'}
    "asyncpg": sa.exc.DBAPIError,  # from asyncpg.exceptions.InvalidPasswordError
}
CURRENT_USER = sa.text("SELECT current_user")


def _installed(kind: drivers.Kind) -> list[pytest.ParameterSet]:
    return [
        pytest.param(
            name,
            marks=[]
            if drivers.get(name).is_installed()
            else [pytest.mark.skip(reason=f"driver {name} is not installed")],
        )
        for name in drivers.names_supporting(kind)
    ]


def _wait_until_refused(endpoint: Endpoint, timeout: float = 30.0) -> str:
    """Poll fresh raw logins with `endpoint`'s password until the server refuses it; the error."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            AdminConnection(endpoint).close()
        except Exception as exc:
            if REFUSED in str(exc):
                return str(exc)
            raise
        if time.monotonic() > deadline:
            raise AssertionError(f"{endpoint.user}'s token still works after {timeout} s")
        time.sleep(0.05)


def _check_expired(
    error: sa.exc.DBAPIError, driver: str, role: str, pg_plain: PlainTopology
) -> None:
    """The refusal has the driver's error class, and the server logged why: expiry."""
    assert type(error) is REFUSED_AS[driver], repr(error)
    assert f'User "{role}" has an expired password.' in pg_plain.server.log_tail(200)


# --- the issuer --------------------------------------------------------------------------------


def test_issuer_role_is_a_plain_login_role(pg_token_issuer: TokenIssuer) -> None:
    token = pg_token_issuer.issue(60)
    connection = AdminConnection(pg_token_issuer.endpoint(token))
    try:
        assert connection.scalar("SELECT current_user") == pg_token_issuer.role
        assert (
            connection.scalar("SELECT rolsuper FROM pg_roles WHERE rolname = current_user") is False
        )
        assert connection.scalar("SELECT current_database()") == pg_token_issuer.database
    finally:
        connection.close()


def test_a_new_token_invalidates_the_previous_one(pg_token_issuer: TokenIssuer) -> None:
    """One role has one password: unlike RDS tokens, an older token dies at the next issue()."""
    first = pg_token_issuer.issue(60)
    AdminConnection(pg_token_issuer.endpoint(first)).close()
    second = pg_token_issuer.issue(60)
    with pytest.raises(Exception, match=REFUSED):
        AdminConnection(pg_token_issuer.endpoint(first))
    AdminConnection(pg_token_issuer.endpoint(second)).close()


# --- fixed token in the URL vs. the do_connect hook ----------------------------------------------


@pytest.mark.parametrize("driver", _installed("sync"))
def test_sync_fixed_token_expires_the_hook_keeps_connecting(
    pg_token_issuer: TokenIssuer, pg_plain: PlainTopology, driver: str
) -> None:
    fixed = create_engine(pg_token_issuer.endpoint(pg_token_issuer.issue(TTL)), driver)
    hooked = create_engine(pg_token_issuer.endpoint(""), driver)
    fetched: list[str] = []

    def fetch() -> str:
        fetched.append(pg_token_issuer.issue(TTL))
        return fetched[-1]

    fresh_token_on_connect(hooked, fetch)
    with contextlib.ExitStack() as stack:
        stack.callback(fixed.dispose)
        stack.callback(hooked.dispose)
        held = stack.enter_context(fixed.connect())
        assert held.scalar(CURRENT_USER) == pg_token_issuer.role

        _wait_until_refused(pg_token_issuer.endpoint(fixed.url.password or ""))
        assert fetched == []  # nothing re-issued: the token expired by itself
        # The cheatsheet's mistake: the pool's next connection logs in with the dead token.
        with pytest.raises(sa.exc.DBAPIError, match=REFUSED) as refused:
            fixed.connect()
        _check_expired(refused.value, driver, pg_token_issuer.role, pg_plain)
        # The server checks passwords at login only: the open connection still works.
        assert held.scalar(CURRENT_USER) == pg_token_issuer.role

        first = stack.enter_context(hooked.connect())
        assert first.scalar(CURRENT_USER) == pg_token_issuer.role
        _wait_until_refused(pg_token_issuer.endpoint(fetched[-1]))
        # A second connection (the first is checked out) fetches its own token.
        second = stack.enter_context(hooked.connect())
        assert second.scalar(CURRENT_USER) == pg_token_issuer.role
        assert len(fetched) == 2


@pytest.mark.parametrize("driver", _installed("async"))
async def test_async_fixed_token_expires_the_hook_keeps_connecting(
    pg_token_issuer: TokenIssuer, pg_plain: PlainTopology, driver: str
) -> None:
    fixed = create_async_engine(pg_token_issuer.endpoint(pg_token_issuer.issue(TTL)), driver)
    hooked = create_async_engine(pg_token_issuer.endpoint(""), driver)
    fetched: list[str] = []

    def fetch() -> str:
        fetched.append(pg_token_issuer.issue(TTL))
        return fetched[-1]

    fresh_token_on_connect(hooked, fetch)
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(fixed.dispose)
        stack.push_async_callback(hooked.dispose)
        held: AsyncConnection = await stack.enter_async_context(fixed.connect())
        assert await held.scalar(CURRENT_USER) == pg_token_issuer.role

        await asyncio.to_thread(
            _wait_until_refused, pg_token_issuer.endpoint(fixed.url.password or "")
        )
        with pytest.raises(sa.exc.DBAPIError, match=REFUSED) as refused:
            await fixed.connect()
        _check_expired(refused.value, driver, pg_token_issuer.role, pg_plain)
        assert await held.scalar(CURRENT_USER) == pg_token_issuer.role

        first = await stack.enter_async_context(hooked.connect())
        assert await first.scalar(CURRENT_USER) == pg_token_issuer.role
        await asyncio.to_thread(_wait_until_refused, pg_token_issuer.endpoint(fetched[-1]))
        second = await stack.enter_async_context(hooked.connect())
        assert await second.scalar(CURRENT_USER) == pg_token_issuer.role
        assert len(fetched) == 2
