"""The audit of the cheatsheet's common mistakes: each one reported, the recipes clean."""

from __future__ import annotations

import re

import pytest
import sqlalchemy as sa

from pytest_pgtopo import Endpoint, create_engine
from pytest_pgtopo.audit import Target, audit_engine

MISTAKES = """
import asyncio
import pg8000.dbapi
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from pytest_pgtopo import SessionSettings, create_engine


def _touch(engine):
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.DBAPIError:
        pass  # The pooler may refuse it: the audit has already spoken.
    finally:
        engine.dispose()


def test_app_builds_a_bare_engine(pg_plain):
    # What many apps do: a URL and nothing else. No name, no statement_timeout.
    _touch(sa.create_engine(pg_plain.primary.url("psycopg")))


def test_generic_name(pg_plain):
    _touch(sa.create_engine(pg_plain.primary.url("psycopg2"), connect_args={"application_name": "python"}))


async def test_prepared_statements_behind_pooler(pg_bouncer):
    settings = SessionSettings(timezone=None, statement_timeout=None, idle_in_transaction_session_timeout=None)
    from pytest_pgtopo import create_async_engine as recipe
    engine = recipe(pg_bouncer.bouncer, "asyncpg", settings=settings)  # no pooler="transaction"
    try:
        async with engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))
    finally:
        await engine.dispose()


def test_startup_parameters_through_pooler(pg_bouncer):
    _touch(create_engine(pg_bouncer.bouncer, "psycopg2"))  # the direct recipe sends `options`


def test_tls_without_verification(pg_tls):
    url = pg_tls.primary.url("psycopg").set(query={"sslmode": "require"})
    _touch(create_engine(pg_tls.primary.with_dbname("postgres"), "psycopg", tls_mode="require"))


def test_pg8000_default_tls(pg_tls):
    url = pg_tls.primary.url("pg8000")
    _touch(sa.create_engine(url, connect_args={"application_name": "billing-worker"}))


async def test_sync_driver_in_async_code(pg_plain):
    _touch(create_engine(pg_plain.primary, "psycopg2"))


def test_no_statement_timeout(pg_plain):
    _touch(sa.create_engine(pg_plain.primary.url("psycopg"), connect_args={"application_name": "billing-worker"}))
"""

# In error mode the first findings stop the connection, so a server-side finding
# (no-statement-timeout) shows only where the connection parameters were clean.
EXPECTED = {
    "test_app_builds_a_bare_engine": {"application-name"},
    "test_generic_name": {"application-name"},
    "test_prepared_statements_behind_pooler": {"prepared-statements-behind-pooler"},
    "test_startup_parameters_through_pooler": {"startup-parameter-refused-by-pooler"},
    "test_tls_without_verification": {"tls-not-verified"},
    "test_pg8000_default_tls": {"tls-not-verified"},
    "test_sync_driver_in_async_code": {"sync-driver-in-async-code"},
    "test_no_statement_timeout": {"no-statement-timeout"},
}


def test_error_mode_fails_each_mistake_with_its_fix(inner: pytest.Pytester) -> None:
    inner.makepyfile(MISTAKES)
    result = inner.runpytest("--pgtopo-audit=error", "-p", "no:randomly")
    result.assert_outcomes(failed=len(EXPECTED))
    output = result.stdout.str()
    for test, codes in EXPECTED.items():
        failure = re.search(rf"FAILED \S+::{test}\b", output)
        assert failure, f"{test} did not fail"
        section = output.split(f"_ {test} _", 1)[1].split("- pgtopo log", 1)[0]
        found = set(re.findall(r"\[([a-z-]+)\]", section))
        assert codes <= found, f"{test}: expected {codes}, got {found}"
    assert "Fix: " in output


def test_warn_mode_reports_without_failing(inner: pytest.Pytester) -> None:
    inner.makepyfile(MISTAKES)
    result = inner.runpytest("--pgtopo-audit=warn")
    result.assert_outcomes(passed=len(EXPECTED))
    result.stdout.fnmatch_lines(
        [
            "*PgtopoWarning: pgtopo audit*",
            "*pgtopo audit: * finding(s)*",
            "*[[]prepared-statements-behind-pooler[]]*Fix: create_engine(..., pooler='transaction')*",
        ]
    )


RECIPES = """
import sqlalchemy as sa

def test_plain(pg_sync_engine):
    with pg_sync_engine.connect() as conn: conn.execute(sa.text("SELECT 1"))

async def test_plain_async(pg_engine):
    async with pg_engine.connect() as conn: await conn.execute(sa.text("SELECT 1"))

def test_bouncer(pgbouncer_sync_engine):
    with pgbouncer_sync_engine.connect() as conn: conn.execute(sa.text("SELECT 1"))

async def test_bouncer_async(pgbouncer_engine):
    async with pgbouncer_engine.connect() as conn: await conn.execute(sa.text("SELECT 1"))

def test_tls(tls_sync_engine):
    with tls_sync_engine.connect() as conn: conn.execute(sa.text("SELECT 1"))

async def test_tls_async(tls_engine):
    async with tls_engine.connect() as conn: await conn.execute(sa.text("SELECT 1"))

def test_replica(primary_sync_engine, replica_sync_engine):
    for engine in (primary_sync_engine, replica_sync_engine):
        with engine.connect() as conn: conn.execute(sa.text("SELECT 1"))

def test_failover(failover_sync_engine):
    with failover_sync_engine.connect() as conn: conn.execute(sa.text("SELECT 1"))
"""


def test_the_recipes_produce_no_finding(inner: pytest.Pytester) -> None:
    inner.makepyfile(RECIPES)
    result = inner.runpytest(
        "--pgtopo-audit=error", "--pgtopo-driver=all", "-W", "error::pytest_pgtopo.PgtopoWarning"
    )
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) == 0, result.stdout.str()
    assert outcomes.get("errors", 0) == 0, result.stdout.str()
    assert outcomes["passed"] >= 12
    assert "pgtopo audit:" not in result.stdout.str()


def test_audit_engine_function(pg_plain_database: Endpoint) -> None:
    bare = sa.create_engine(pg_plain_database.url("psycopg"))
    recipe = create_engine(pg_plain_database, "psycopg", settings=None)
    try:
        assert {f.code for f in audit_engine(bare)} == {"application-name", "no-statement-timeout"}
        assert audit_engine(recipe) == []
        tls_required = {f.code for f in audit_engine(recipe, Target(tls=True))}
        assert tls_required == {"tls-not-verified"}
    finally:
        bare.dispose()
        recipe.dispose()
