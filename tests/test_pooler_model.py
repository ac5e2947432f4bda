"""PgBouncerPooler: what a PgBouncer does, and what the recipe makes of it per driver.

Pure checks of the value and of engine_arguments(); the proofs on real PgBouncers are in
test_pgbouncer_recipes.py.
"""

from __future__ import annotations

import psycopg
import pytest

from pytest_pgtopo import Endpoint, PgBouncerPooler, PgtopoError, SessionSettings, drivers
from pytest_pgtopo.recipes.engines import DEFAULT_CLIENT, engine_arguments
from pytest_pgtopo.recipes.pooler import as_pgbouncer, keeps_prepared_statements

BOUNCER = Endpoint("127.0.0.1", 6432, "app", "secret", "orders")
PG_1_18 = PgBouncerPooler(version=(1, 18, 0))
PG_1_24 = PgBouncerPooler(version=(1, 24, 1))


def _connect_args(driver: str, pooler: object, endpoint: Endpoint = BOUNCER) -> dict[str, object]:
    kind = "async" if driver == "asyncpg" else "sync"
    _, kwargs = engine_arguments(
        endpoint,
        driver,
        kind,
        settings=SessionSettings(),
        client=DEFAULT_CLIENT,
        engine_kwargs={},
        pooler=pooler,  # type: ignore[arg-type]
    )
    return dict(kwargs["connect_args"])


@pytest.mark.parametrize(
    ("pooler", "effective", "tracks"),
    [
        (PgBouncerPooler(version=(1, 18, 0)), 0, False),
        (PgBouncerPooler(version=(1, 21, 0)), 0, False),  # The setting exists, off by default.
        (PgBouncerPooler(version=(1, 21, 0), max_prepared_statements=100), 100, True),
        (PgBouncerPooler(version=(1, 24, 1)), 200, True),  # On by default since 1.24.
        (PgBouncerPooler(version=(1, 24, 1), max_prepared_statements=0), 0, False),
        (as_pgbouncer("transaction"), 0, False),  # The conservative choice.
    ],
)
def test_what_each_version_tracks(pooler: PgBouncerPooler, effective: int, tracks: bool) -> None:
    assert pooler.effective_max_prepared_statements == effective
    assert pooler.tracks_prepared_statements is tracks


def test_asyncpg_keeps_its_statement_cache_only_where_pgbouncer_tracks() -> None:
    off = {"statement_cache_size": 0, "prepared_statement_cache_size": 0}
    assert off.items() <= _connect_args("asyncpg", "transaction").items()
    assert off.items() <= _connect_args("asyncpg", PG_1_18).items()
    tracked = _connect_args("asyncpg", PG_1_24)
    assert "statement_cache_size" not in tracked
    assert "prepared_statement_cache_size" not in tracked


def test_psycopg_keeps_prepared_statements_only_with_libpq_17_and_pgbouncer_1_22() -> None:
    assert _connect_args("psycopg", PG_1_18)["prepare_threshold"] is None
    libpq_17 = psycopg.pq.version() >= 170000
    on_1_24 = _connect_args("psycopg", PG_1_24)
    assert ("prepare_threshold" not in on_1_24) is libpq_17
    on_1_21 = _connect_args("psycopg", PgBouncerPooler((1, 21, 0), max_prepared_statements=50))
    assert on_1_21["prepare_threshold"] is None, "1.21 does not track Close: caches stay off"


@pytest.mark.parametrize("driver", ["psycopg2", "pg8000"])
def test_drivers_without_server_side_statements_are_unaffected(driver: str) -> None:
    assert _connect_args(driver, PG_1_24) == _connect_args(driver, "transaction")
    assert not keeps_prepared_statements(PG_1_24, drivers.get(driver))


def test_session_pooling_keeps_prepared_statements_but_still_filters_startup() -> None:
    session = PgBouncerPooler(version=(1, 18, 0), pool_mode="session")
    args = _connect_args("asyncpg", session)
    assert "statement_cache_size" not in args
    assert set(args["server_settings"]) <= {"application_name", "TimeZone"}  # type: ignore[arg-type]


def test_a_pooler_from_another_topology_is_refused() -> None:
    elsewhere = PgBouncerPooler(version=(1, 24, 1), address=("127.0.0.1", 7777))
    with pytest.raises(PgtopoError, match=r"describes the PgBouncer at 127\.0\.0\.1:7777.*6432"):
        _connect_args("asyncpg", elsewhere)
    here = PgBouncerPooler(version=(1, 24, 1), address=("127.0.0.1", 6432))
    assert "statement_cache_size" not in _connect_args("asyncpg", here)


def test_a_pooler_that_is_not_one_is_refused() -> None:
    with pytest.raises(PgtopoError, match=r"pooler='session' is not a pooler"):
        _connect_args("asyncpg", "session")
