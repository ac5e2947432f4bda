"""Schemas loaded once across runs: a second run restores the cached template instead of
loading it, and a changed schema is loaded afresh, never served stale."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_pgtopo import cached_schema
from pytest_pgtopo.schema_cache import fingerprint

# The inner test reports how its schema got into the template, and what the table holds.
REPORT = """
import sqlalchemy as sa

def test_report(pg_sync_engine, pg_plain, pgtopo_session):
    fills = pgtopo_session.databases(pg_plain).fills
    with pg_sync_engine.connect() as conn:
        columns = sorted(conn.execute(sa.text(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'items'"
        )).scalars())
        rows = conn.execute(sa.text("SELECT count(*) FROM items")).scalar()
    print(f"FILLS={fills} COLUMNS={columns} ROWS={rows}")
"""

CALLABLE_CONFTEST = """
import pytest
import sqlalchemy as sa
from pathlib import Path
from pytest_pgtopo import cached_schema

def migrate(engine):
    with Path(__file__).with_name("loads.log").open("a") as log:
        log.write("load\\n")
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE items (id int, {column} text)"))
        conn.execute(sa.text("INSERT INTO items VALUES (1, 'seed'), (2, 'seed')"))

@pytest.fixture(scope="session")
def pgtopo_schema():
    return cached_schema(migrate, key="{key}")
"""


def run(inner: pytest.Pytester, cache: Path) -> str:
    result = inner.runpytest("-s", f"--pgtopo-schema-cache-dir={cache}")
    result.assert_outcomes(passed=1)
    line = next(line for line in result.outlines if "FILLS=" in line)
    return line[line.index("FILLS=") :]


def loads(inner: pytest.Pytester) -> int:
    log = inner.path / "loads.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_a_keyed_callable_is_loaded_once_then_restored(inner: pytest.Pytester, scratch: Path):
    inner.makeconftest(CALLABLE_CONFTEST.format(column="label", key="rev-1"))
    inner.makepyfile(REPORT)
    first = run(inner, scratch)
    assert first == "FILLS=['loaded'] COLUMNS=['id', 'label'] ROWS=2"
    second = run(inner, scratch)
    # Restored: the seed rows came along, and the migration did not run again.
    assert second == "FILLS=['restored'] COLUMNS=['id', 'label'] ROWS=2"
    assert loads(inner) == 1
    # A new key is a new schema: loaded again, with the new column, not the cached one.
    inner.makeconftest(CALLABLE_CONFTEST.format(column="title", key="rev-2"))
    assert run(inner, scratch) == "FILLS=['loaded'] COLUMNS=['id', 'title'] ROWS=2"
    assert loads(inner) == 2


def test_a_changed_sql_file_is_never_served_stale(inner: pytest.Pytester, scratch: Path):
    inner.makeconftest(
        """
        import pytest
        from pathlib import Path

        @pytest.fixture(scope="session")
        def pgtopo_schema():
            return Path(__file__).with_name("schema.sql")
        """
    )
    inner.makepyfile(REPORT)
    schema = inner.path / "schema.sql"
    schema.write_text("CREATE TABLE items (id int, label text); INSERT INTO items VALUES (1, 'a');")
    assert run(inner, scratch) == "FILLS=['loaded'] COLUMNS=['id', 'label'] ROWS=1"
    assert run(inner, scratch) == "FILLS=['restored'] COLUMNS=['id', 'label'] ROWS=1"
    schema.write_text("CREATE TABLE items (id int, title text);")
    assert run(inner, scratch) == "FILLS=['loaded'] COLUMNS=['id', 'title'] ROWS=0"


def test_a_changed_metadata_is_never_served_stale(inner: pytest.Pytester, scratch: Path):
    conftest = """
        import pytest
        import sqlalchemy as sa

        @pytest.fixture(scope="session")
        def pgtopo_schema():
            metadata = sa.MetaData()
            sa.Table("items", metadata, sa.Column("id", sa.Integer), sa.Column("{column}", sa.Text))
            return metadata
        """
    inner.makeconftest(conftest.format(column="label"))
    inner.makepyfile(REPORT)
    assert run(inner, scratch) == "FILLS=['loaded'] COLUMNS=['id', 'label'] ROWS=0"
    assert run(inner, scratch) == "FILLS=['restored'] COLUMNS=['id', 'label'] ROWS=0"
    inner.makeconftest(conftest.format(column="title"))
    assert run(inner, scratch) == "FILLS=['loaded'] COLUMNS=['id', 'title'] ROWS=0"


def test_a_bare_callable_is_loaded_every_run(inner: pytest.Pytester, scratch: Path):
    conftest = CALLABLE_CONFTEST.replace('cached_schema(migrate, key="{key}")', "migrate").format(
        column="label"
    )
    inner.makeconftest(conftest)
    inner.makepyfile(REPORT)
    assert run(inner, scratch) == "FILLS=['uncached'] COLUMNS=['id', 'label'] ROWS=2"
    assert run(inner, scratch) == "FILLS=['uncached'] COLUMNS=['id', 'label'] ROWS=2"
    assert loads(inner) == 2
    assert list(scratch.glob("*.dump")) == []


def test_a_schema_that_raises_caches_nothing(inner: pytest.Pytester, scratch: Path):
    inner.makeconftest(
        """
        import pytest
        from pytest_pgtopo import cached_schema

        def migrate(engine):
            raise RuntimeError("migration 0042 is broken")

        @pytest.fixture(scope="session")
        def pgtopo_schema():
            return cached_schema(migrate, key="rev-1")
        """
    )
    inner.makepyfile(REPORT)
    result = inner.runpytest(f"--pgtopo-schema-cache-dir={scratch}")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*RuntimeError: migration 0042 is broken*"])
    assert list(scratch.glob("*.dump")) == []


def test_an_unwritable_cache_directory_is_a_usage_error(inner: pytest.Pytester, scratch: Path):
    blocker = scratch / "a-file"
    blocker.write_text("")
    unwritable = f"--pgtopo-schema-cache-dir={blocker / 'cache'}"
    inner.makepyfile("def test_connects(pg_sync_engine):\n    pg_sync_engine.connect().close()\n")
    result = inner.runpytest(unwritable)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [f"*schema cache directory {blocker / 'cache'} is not writable*--pgtopo-schema-cache=off*"]
    )
    # With the cache off, the directory is not needed.
    inner.runpytest(unwritable, "--pgtopo-schema-cache=off").assert_outcomes(passed=1)


def test_fingerprints_follow_the_source(tmp_path: Path):
    import sqlalchemy as sa

    def metadata(column: str) -> sa.MetaData:
        md = sa.MetaData()
        sa.Table("items", md, sa.Column("id", sa.Integer), sa.Column(column, sa.Text))
        return md

    assert fingerprint(metadata("a")) == fingerprint(metadata("a"))
    assert fingerprint(metadata("a")) != fingerprint(metadata("b"))
    sql = tmp_path / "schema.sql"
    sql.write_text("CREATE TABLE a (id int);")
    before = fingerprint(sql)
    sql.write_text("CREATE TABLE a (id bigint);")
    assert fingerprint(sql) != before
    assert fingerprint(cached_schema(print, key="x")) != fingerprint(cached_schema(print, key="y"))
    assert fingerprint(None) is None


def test_cached_schema_refuses_an_empty_key():
    from pytest_pgtopo import PgtopoError

    with pytest.raises(PgtopoError, match="non-empty string"):
        cached_schema(print, key="")
