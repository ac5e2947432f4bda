"""Engine fixtures set up their topology and database only after the driver check (see
tests/test_messages.py), through request.getfixturevalue. What pytest reads from a test's
fixture closure must still work: the version axis, a rebuilt replica pair, and server logs in
the report of a failed test (tests/test_plugin.py)."""

from __future__ import annotations

import pytest

from pytest_pgtopo.matrix import version_plan
from pytest_pgtopo.servers.binaries import find_pg_binaries


def test_a_test_with_only_engine_fixtures_is_on_the_version_axis() -> None:
    closure = ["pg_sync_engine", "_pgtopo_plain_engines", "pgtopo_engine_recipe"]
    assert version_plan([15, 18], closure) == [15, 18]
    assert version_plan([15, 18], ["pgtopo_engine_recipe", "pgtopo_settings"]) == []


def test_an_engine_test_can_name_its_server_version(inner: pytest.Pytester) -> None:
    major = find_pg_binaries(None).major
    inner.makepyfile(
        f"""
        import pytest
        import sqlalchemy as sa

        @pytest.mark.parametrize("pgtopo_pg_version", [{major}], indirect=True)
        def test_on_that_version(pg_sync_engine, pgtopo_pg_version):
            with pg_sync_engine.connect() as conn:
                version = conn.scalar(sa.text("SHOW server_version_num"))
            assert int(version) // 10000 == pgtopo_pg_version == {major}
        """
    )
    inner.runpytest().assert_outcomes(passed=1)


def test_a_promotion_does_not_leak_into_a_test_that_names_only_engines(
    inner: pytest.Pytester,
) -> None:
    inner.makepyfile(
        """
        import sqlalchemy as sa

        def test_1_promotes(pg_replica_pair):
            pg_replica_pair.promote()

        def test_2_gets_a_primary_and_a_replica(primary_sync_engine, replica_sync_engine):
            with primary_sync_engine.connect() as conn:
                assert conn.scalar(sa.text("SELECT pg_is_in_recovery()")) is False
            with replica_sync_engine.connect() as conn:
                assert conn.scalar(sa.text("SELECT pg_is_in_recovery()")) is True
        """
    )
    inner.runpytest("-p", "no:randomly").assert_outcomes(passed=2)
