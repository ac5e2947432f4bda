"""The driver matrix as plain function calls: no inner pytest run, no server."""

from __future__ import annotations

import dataclasses
import itertools

import pytest

import pytest_pgtopo.plugin  # its @engine_fixture decorators fill ENGINE_FIXTURES
from pytest_pgtopo import drivers, matrix
from pytest_pgtopo.matrix import (
    TOPOLOGY_FIXTURES,
    EngineFixture,
    Plan,
    default_driver,
    parse_driver_list,
    plan,
    version_id,
    version_plan,
)

ASYNC = EngineFixture("async")
SYNC = EngineFixture("sync")
ASYNC_MULTI = EngineFixture("async", multi_host=True)
SYNC_MULTI = EngineFixture("sync", multi_host=True)
ALL = ("asyncpg", "psycopg", "psycopg2", "pg8000")


def test_all_four_drivers_are_installed_here() -> None:
    # The expectations below name drivers; they assume the dev environment has every one.
    assert drivers.installed() == list(ALL)


def test_engine_fixture_table_matches_the_plugins_fixtures() -> None:
    assert matrix.ENGINE_FIXTURES == {
        "pg_engine": ASYNC,
        "pg_sync_engine": SYNC,
        "pgbouncer_engine": ASYNC,
        "pgbouncer_sync_engine": SYNC,
        "tls_engine": ASYNC,
        "tls_sync_engine": SYNC,
        "primary_engine": ASYNC,
        "primary_sync_engine": SYNC,
        "replica_engine": ASYNC,
        "replica_sync_engine": SYNC,
        "failover_engine": ASYNC_MULTI,
        "failover_sync_engine": SYNC_MULTI,
        "ha_engine": ASYNC,
        "ha_sync_engine": SYNC,
        "ha_failover_engine": ASYNC_MULTI,
        "ha_failover_sync_engine": SYNC_MULTI,
    }
    # Registered under the fixtures' own names, and still fixtures pytest can see.
    for name in matrix.ENGINE_FIXTURES:
        assert getattr(pytest_pgtopo.plugin, name).__name__ == name


def test_engine_fixture_registers_under_the_function_name_and_returns_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(matrix, "ENGINE_FIXTURES", {})

    def my_engine() -> None: ...

    assert matrix.engine_fixture("sync", multi_host=True)(my_engine) is my_engine
    assert matrix.ENGINE_FIXTURES == {"my_engine": SYNC_MULTI}


def test_needs_of_keeps_engine_fixtures_only_once_each() -> None:
    names = ["request", "pg_engine", "tls_engine", "failover_sync_engine", "pg_plain"]
    assert matrix.needs_of(names) == {ASYNC, SYNC_MULTI}
    assert matrix.needs_of(["pg_plain", "pgtopo_driver"]) == set()


def test_served_by_and_describe() -> None:
    assert [d for d in ALL if SYNC.served_by(d)] == ["psycopg", "psycopg2", "pg8000"]
    assert [d for d in ALL if ASYNC.served_by(d)] == ["asyncpg", "psycopg"]
    assert [d for d in ALL if SYNC_MULTI.served_by(d)] == ["psycopg", "psycopg2"]
    assert SYNC_MULTI.describe() == "sync multi-host engines"
    assert ASYNC.describe() == "async engines"


# --- parse_driver_list -------------------------------------------------------------------------


def test_parse_empty_means_defaults_and_all_means_installed() -> None:
    assert parse_driver_list("  ") == ()
    assert parse_driver_list(" all ") == ALL


def test_parse_keeps_order_and_drops_repeats_and_blanks() -> None:
    assert parse_driver_list(" pg8000, asyncpg,,pg8000 ,") == ("pg8000", "asyncpg")


def test_parse_rejects_an_unknown_driver_by_name() -> None:
    with pytest.raises(ValueError, match=r"^unknown driver 'mysqlclient'; expected 'all' or names"):
        parse_driver_list("psycopg,mysqlclient")


def test_parse_rejects_a_driver_that_is_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    missing = dataclasses.replace(drivers.DRIVERS["pg8000"], module="pgtopo_no_such_module")
    monkeypatch.setitem(drivers.DRIVERS, "pg8000", missing)
    with pytest.raises(ValueError, match=r"^driver 'pg8000' is not installed"):
        parse_driver_list("psycopg,pg8000")


def test_parse_all_with_nothing_installed_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(drivers, "installed", lambda: [])
    with pytest.raises(ValueError, match=r"pip install 'pytest-pgtopo\[all\]'"):
        parse_driver_list("all")


# --- plan --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("selected", "needs"),
    [
        (ALL, set()),  # not an engine test
        ((), {ASYNC, SYNC}),  # nothing selected: per-fixture defaults
        (("psycopg2",), {SYNC}),  # one usable driver: the fixture default returns it
    ],
)
def test_plan_leaves_the_test_alone(selected: tuple[str, ...], needs: set[EngineFixture]) -> None:
    assert plan(selected, needs) == Plan()


@pytest.mark.parametrize(
    ("selected", "needs", "expected"),
    [
        (ALL, {SYNC}, ("psycopg", "psycopg2", "pg8000")),
        (ALL, {ASYNC}, ("asyncpg", "psycopg")),
        (ALL, {ASYNC, SYNC}, ("psycopg",)),
        (ALL, {SYNC_MULTI}, ("psycopg", "psycopg2")),  # pg8000 has no multi-host
        (("pg8000", "psycopg2", "asyncpg"), {SYNC}, ("pg8000", "psycopg2")),  # selected order
        (("psycopg2", "asyncpg"), {ASYNC}, ("asyncpg",)),  # one usable out of several
    ],
)
def test_plan_parametrizes_the_usable_drivers(
    selected: tuple[str, ...], needs: set[EngineFixture], expected: tuple[str, ...]
) -> None:
    assert plan(selected, needs) == Plan(expected)


@pytest.mark.parametrize(
    ("selected", "needs", "reason"),
    [
        (
            ("psycopg2", "pg8000"),
            {ASYNC},
            "pgtopo: no selected driver (psycopg2, pg8000) can back async engines; "
            "drivers that can: asyncpg, psycopg",
        ),
        (
            ("pg8000",),
            {SYNC_MULTI},
            "pgtopo: no selected driver (pg8000) can back sync multi-host engines; "
            "drivers that can: psycopg, psycopg2",
        ),
        (
            ("asyncpg", "pg8000"),
            {SYNC_MULTI, ASYNC},
            "pgtopo: no selected driver (asyncpg, pg8000) can back async engines and "
            "sync multi-host engines; drivers that can: psycopg",
        ),
    ],
)
def test_plan_skips_every_selected_driver_when_none_can_serve(
    selected: tuple[str, ...], needs: set[EngineFixture], reason: str
) -> None:
    assert plan(selected, needs) == Plan(selected, skip_reason=reason)


def test_version_axis_covers_every_test_that_starts_a_topology() -> None:
    # Through an engine fixture's closure as much as directly: pytest hands the whole closure.
    closure = ["pg_sync_engine", "pg_plain_database", "pg_plain", "pgtopo_session"]
    assert version_plan([15, 18], closure) == [15, 18]
    assert version_plan([15, 18], ["pg_bouncer_factory"]) == [15, 18]
    assert [version_id(m) for m in version_plan([14, 17], ["pg_tls"])] == ["pg14", "pg17"]


def test_version_axis_leaves_alone_tests_without_servers_and_single_version_runs() -> None:
    assert version_plan([15, 18], ["tmp_path", "pgtopo_settings"]) == []
    assert version_plan([18], ["pg_plain"]) == []
    assert version_plan([], ["pg_plain"]) == []


def test_every_topology_fixture_is_registered() -> None:
    assert {"pg_plain", "pg_bouncer", "pg_bouncer_factory", "pg_tls", "pg_tls_factory"} | {
        "pg_replica_pair",
        "pg_ha",
    } == TOPOLOGY_FIXTURES


# --- default_driver ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("selected", "needs", "expected"),
    [
        ((), {ASYNC}, "asyncpg"),
        ((), {ASYNC_MULTI, ASYNC}, "asyncpg"),
        ((), {SYNC}, "psycopg"),
        ((), {ASYNC, SYNC}, "psycopg"),  # psycopg serves both kinds in one test
        ((), set(), "psycopg"),
        (("psycopg2",), {SYNC}, "psycopg2"),
        (ALL, {ASYNC}, "asyncpg"),  # several selected: the matrix parametrizes, not this
    ],
)
def test_default_driver(
    selected: tuple[str, ...], needs: set[EngineFixture], expected: str
) -> None:
    assert default_driver(selected, needs) == expected


def _orderings() -> list[tuple[str, ...]]:
    return [p for n in range(len(ALL) + 1) for p in itertools.permutations(ALL, n)]


def _need_sets() -> list[set[EngineFixture]]:
    kinds = (ASYNC, SYNC, ASYNC_MULTI, SYNC_MULTI)
    return [set(c) for n in range(1, len(kinds) + 1) for c in itertools.combinations(kinds, n)]


def test_every_engine_test_gets_a_driver_that_serves_it_or_a_skip() -> None:
    """Over every selection and every mix of needs: each run driver can serve the test, no
    usable selected driver is left out, and a skip happens only when none could serve."""
    for selected, needs in itertools.product(_orderings(), _need_sets()):
        result = plan(selected, needs)
        serving = [d for d in selected if all(need.served_by(d) for need in needs)]
        if result.skip_reason is not None:
            assert not serving
            assert result.drivers == selected
        elif result.drivers:
            assert list(result.drivers) == serving
        else:
            chosen = default_driver(selected, needs)
            assert all(need.served_by(chosen) for need in needs), (selected, needs, chosen)
            assert not selected or chosen in selected
