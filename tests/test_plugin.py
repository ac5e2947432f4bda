"""Loading the plugin, the driver matrix, the report header and log tails on failure."""

from __future__ import annotations

import pytest

from pytest_pgtopo import drivers

ENGINE_TESTS = """
import sqlalchemy as sa

def test_sync(pg_sync_engine, pgtopo_driver):
    with pg_sync_engine.connect() as conn:
        assert conn.scalar(sa.text("SELECT 1")) == 1
    print("RAN sync", pgtopo_driver, pg_sync_engine.dialect.driver)

async def test_async(pg_engine, pgtopo_driver):
    async with pg_engine.connect() as conn:
        assert await conn.scalar(sa.text("SELECT 1")) == 1
    print("RAN async", pgtopo_driver, pg_engine.dialect.driver)

async def test_both(pg_engine, pg_sync_engine, pgtopo_driver):
    print("RAN both", pgtopo_driver)
"""


def _ran(result: pytest.RunResult) -> list[str]:
    return sorted(line[line.index("RAN ") :] for line in result.outlines if "RAN " in line)


def test_loads_with_dash_p_when_autoload_is_off(
    inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    inner.makepyfile("def test_server(pg_plain):\n    assert pg_plain.primary.port > 0\n")
    result = inner.runpytest_subprocess("-p", "pytest_pgtopo", "-p", "asyncio")
    result.assert_outcomes(passed=1)


def test_dash_p_with_entry_point_and_pytest_plugins_together(inner: pytest.Pytester) -> None:
    inner.makeconftest('pytest_plugins = ["pytest_pgtopo"]')
    inner.makepyfile("def test_server(pg_plain):\n    assert pg_plain.primary.port > 0\n")
    result = inner.runpytest_subprocess("-p", "pytest_pgtopo")
    result.assert_outcomes(passed=1)


def test_defaults_asyncpg_for_async_psycopg_for_sync(inner: pytest.Pytester) -> None:
    inner.makepyfile(ENGINE_TESTS)
    result = inner.runpytest("-s")
    result.assert_outcomes(passed=3)
    assert _ran(result) == [
        "RAN async asyncpg asyncpg",
        "RAN both psycopg",
        "RAN sync psycopg psycopg",
    ]


def test_all_runs_each_test_once_per_capable_driver(inner: pytest.Pytester) -> None:
    inner.makepyfile(ENGINE_TESTS)
    result = inner.runpytest("-s", "--pgtopo-driver=all")
    installed = drivers.installed()
    sync = [n for n in installed if drivers.get(n).supports("sync")]
    both = [n for n in sync if drivers.get(n).supports("async")]
    asynchronous = [n for n in installed if drivers.get(n).supports("async")]
    result.assert_outcomes(passed=len(sync) + len(asynchronous) + len(both))
    ran = _ran(result)
    assert [line for line in ran if line.startswith("RAN sync")] == sorted(
        f"RAN sync {name} {name}" for name in sync
    )
    assert [line for line in ran if line.startswith("RAN both")] == sorted(
        f"RAN both {n}" for n in both
    )


def test_a_driver_that_cannot_serve_is_skipped_with_the_reason(inner: pytest.Pytester) -> None:
    inner.makepyfile(ENGINE_TESTS)
    result = inner.runpytest("-rs", "--pgtopo-driver=psycopg2,pg8000")
    result.assert_outcomes(passed=2, skipped=4)
    result.stdout.fnmatch_lines(
        [
            "*pgtopo: no selected driver (psycopg2, pg8000) can back async engines; drivers that can: asyncpg, psycopg*"
        ]
    )


def test_asking_explicitly_for_an_impossible_driver_is_an_error(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        """
        import pytest

        @pytest.mark.parametrize("pgtopo_driver", ["psycopg2"])
        async def test_async(pg_engine):
            pass
        """
    )
    result = inner.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "*pytest-pgtopo: driver 'psycopg2' has no async API, so it cannot back an async engine (pg_engine); use one of: asyncpg, psycopg*"
        ]
    )


def test_default_application_name_identifies_worker_and_test(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        """
        import sqlalchemy as sa

        def test_who_am_i(pg_sync_engine):
            with pg_sync_engine.connect() as conn:
                assert conn.scalar(sa.text("SHOW application_name")) == "pytest-pgtopo main test_who_am_i"
        """
    )
    inner.runpytest().assert_outcomes(passed=1)


def test_report_header_names_backend_server_and_drivers(inner: pytest.Pytester) -> None:
    inner.makepyfile("def test_nothing(): pass")
    result = inner.runpytest("--pgtopo-driver=pg8000")
    result.stdout.fnmatch_lines(
        ["pgtopo: backend=auto, PostgreSQL * from * (*), drivers=pg8000, isolation=database"]
    )


def test_failed_test_report_carries_the_server_log_tail(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        """
        import sqlalchemy as sa

        def test_breaks(pg_sync_engine):
            with pg_sync_engine.connect() as conn:
                conn.execute(sa.text("SELECT no_such_column_here FROM pg_class"))

        def test_fine(pg_sync_engine):
            pass
        """
    )
    result = inner.runpytest()
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*- pgtopo log: postgres plain (*postgres.log) -*",
            '*ERROR:  column "no_such_column_here" does not exist*',
        ]
    )
    assert result.stdout.str().count("pgtopo log:") == 1, "only the failed test gets the log"
