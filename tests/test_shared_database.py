"""pg_plain_shared_database: one database with the schema, for session-scoped engines."""

from __future__ import annotations

import pytest

INNER = """
import pytest
import sqlalchemy as sa
from pytest_pgtopo import create_engine

metadata = sa.MetaData()
sa.Table("notes", metadata, sa.Column("body", sa.Text))

@pytest.fixture(scope="session")
def pgtopo_schema():
    return metadata

@pytest.fixture(scope="session")
def app_engine(pg_plain_shared_database):
    engine = create_engine(pg_plain_shared_database, "psycopg")
    yield engine
    engine.dispose()

def test_first_writes(app_engine):
    with app_engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO notes VALUES ('kept for the session')"))

def test_second_sees_it_and_the_schema(app_engine, pg_plain_shared_database, pg_plain_database):
    with app_engine.connect() as conn:
        assert conn.scalar(sa.text("SELECT count(*) FROM notes")) == 1
    assert pg_plain_database.dbname != pg_plain_shared_database.dbname, "per-test ones stay apart"
"""


def test_a_session_engine_on_the_shared_database_sees_the_schema_and_earlier_writes(
    inner: pytest.Pytester,
) -> None:
    inner.makepyfile(INNER)
    inner.runpytest("-p", "no:randomly").assert_outcomes(passed=2)
