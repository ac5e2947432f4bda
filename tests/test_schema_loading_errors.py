"""A schema that fails to load: every test that needs it gets the original error, at once.

The first failure used to leave a half-built template behind, so every later test failed with
`DuplicateDatabase` instead; and a .sql file's syntax error did not name the file.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pytest_pgtopo import drivers
from pytest_pgtopo.databases import Databases, SchemaLoadError
from pytest_pgtopo.topologies.plain import PlainTopology

# Line 3 holds the error; line 1 has multibyte characters, so a position counted in bytes
# instead of characters would point at the wrong line.
BROKEN_SQL = (
    "-- Schéma: tâches, élèves, données ✓✓✓✓✓✓✓✓✓✓✓✓✓✓✓✓✓✓✓✓\n"
    "CREATE TABLE items (id serial PRIMARY KEY, label text);\n"
    "CREATE TABLE broken (id int,);\n"
    "CREATE INDEX items_label ON items (label);\n"
)

THREE_TESTS = """
def test_one(pg_sync_engine):
    pass

def test_two(pg_sync_engine):
    pass

async def test_three(pg_engine):
    pass
"""

# Runs last (file order): the template of the failed schema must be gone by then.
NO_TEMPLATE_LEFT = """
def test_z_no_template_left(pg_plain, pgtopo_session):
    token = pgtopo_session.databases(pg_plain).token
    left = pg_plain.server.admin.scalar(
        f"SELECT count(*) FROM pg_database WHERE datname LIKE 'pgtopo\\\\_template\\\\_{token}%'"
    )
    assert left == 0
"""

ADMIN_DRIVERS = [name for name in drivers.ADMIN_DRIVER_ORDER if drivers.get(name).is_installed()]


def test_sql_error_names_the_file_and_line_in_every_test(inner: pytest.Pytester) -> None:
    (inner.path / "schema.sql").write_text(BROKEN_SQL)
    inner.makeconftest(
        """
        import pytest
        from pathlib import Path

        @pytest.fixture(scope="session")
        def pgtopo_schema():
            return Path(__file__).parent / "schema.sql"
        """
    )
    inner.makepyfile(THREE_TESTS + NO_TEMPLATE_LEFT)
    result = inner.runpytest()
    result.assert_outcomes(errors=3, passed=1)
    output = result.stdout.str()
    assert "already exists" not in output
    expected = f'{inner.path / "schema.sql"}:3: syntax error at or near ")"'
    assert output.count(expected) >= 3, output
    result.stdout.fnmatch_lines(["*CREATE TABLE broken (id int,);*"])


def test_callable_traceback_reaches_every_test(inner: pytest.Pytester) -> None:
    inner.makeconftest(
        """
        import pytest
        import sqlalchemy as sa

        @pytest.fixture(scope="session")
        def pgtopo_schema():
            def upgrade(engine):
                with engine.begin() as conn:
                    conn.execute(sa.text("CREATE TABLE items (id int)"))
                raise_from_the_migration()
            return upgrade

        def raise_from_the_migration():
            raise ValueError("no such migration: 0042")
        """
    )
    inner.makepyfile(THREE_TESTS + NO_TEMPLATE_LEFT)
    result = inner.runpytest()
    result.assert_outcomes(errors=3, passed=1)
    output = result.stdout.str()
    assert "already exists" not in output
    # Each failing test shows the original exception and the user's frames, down to the raise.
    assert output.count("ValueError: no such migration: 0042") >= 3, output
    assert output.count("conftest.py:9: in upgrade") == 3, output
    assert output.count('raise ValueError("no such migration: 0042")') == 3, output


@pytest.mark.parametrize("driver", ADMIN_DRIVERS)
def test_each_admin_driver_reports_the_line_and_drops_the_template(
    pg_plain: PlainTopology,
    driver: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The script goes through the admin driver: psycopg, psycopg2 and pg8000 each report the
    # error position their own way.
    monkeypatch.setattr(drivers, "ADMIN_DRIVER_ORDER", (driver,))
    schema = tmp_path / "schema.sql"
    schema.write_text(BROKEN_SQL)
    databases = Databases(pg_plain.server)
    try:
        with pytest.raises(SchemaLoadError) as first:
            databases.template(schema)
        assert str(first.value).startswith(f'{schema}:3: syntax error at or near ")"')
        assert "CREATE TABLE broken (id int,);" in str(first.value)
        assert _templates_of(pg_plain, databases.token) == 0

        started = time.monotonic()
        with pytest.raises(SchemaLoadError) as again:
            databases.create("test_later", schema)
        assert time.monotonic() - started < 1.0, "a known failure is not loaded again"
        assert again.value is not first.value
        assert str(again.value) == str(first.value)
        assert again.value.__cause__ is first.value
        assert _templates_of(pg_plain, databases.token) == 0
    finally:
        databases.close()


def test_error_without_a_position_still_names_the_file(
    pg_plain: PlainTopology, tmp_path: Path
) -> None:
    schema = tmp_path / "dup.sql"
    schema.write_text("CREATE TABLE t (id int);\nCREATE TABLE t (id int);\n")
    databases = Databases(pg_plain.server)
    try:
        with pytest.raises(SchemaLoadError, match=rf'^{schema}: relation "t" already exists'):
            databases.template(schema)
    finally:
        databases.close()


def _templates_of(topology: PlainTopology, token: str) -> int:
    return int(
        topology.server.admin.scalar(
            f"SELECT count(*) FROM pg_database WHERE datname LIKE 'pgtopo\\_template\\_{token}%'"
        )
    )
