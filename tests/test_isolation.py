"""Per-test databases, schema loading into the template, rollback mode, and --pgtopo-keep."""

from __future__ import annotations

import re
import subprocess

import pytest

from pytest_pgtopo.session import PgtopoSession
from pytest_pgtopo.topologies.plain import PlainTopology

WRITE_AND_COUNT = """
import sqlalchemy as sa

async def _async_body(engine, label):
    async with engine.begin() as conn:
        await conn.execute(sa.text("INSERT INTO items (label) VALUES (:l)"), {"l": label})
    async with engine.connect() as conn:
        return await conn.scalar(sa.text("SELECT count(*) FROM items"))

def _sync_body(engine, label):
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO items (label) VALUES (:l)"), {"l": label})
    with engine.connect() as conn:
        return conn.scalar(sa.text("SELECT count(*) FROM items"))

def test_sync_first(pg_sync_engine):
    assert _sync_body(pg_sync_engine, "a") == 1

def test_sync_second(pg_sync_engine):
    assert _sync_body(pg_sync_engine, "b") == 1

async def test_async_first(pg_engine):
    assert await _async_body(pg_engine, "c") == 1

async def test_async_second(pg_engine):
    assert await _async_body(pg_engine, "d") == 1
"""

METADATA_SCHEMA = """
import pytest
import sqlalchemy as sa

metadata = sa.MetaData()
sa.Table("items", metadata, sa.Column("id", sa.Integer, primary_key=True), sa.Column("label", sa.Text))

@pytest.fixture(scope="session")
def pgtopo_schema():
    return metadata
"""


def _expected_runs(driver_option: str) -> int:
    from pytest_pgtopo import drivers

    names = drivers.installed() if driver_option == "all" else [driver_option]
    sync = sum(drivers.get(n).supports("sync") for n in names)
    asynchronous = sum(drivers.get(n).supports("async") for n in names)
    return 2 * sync + 2 * asynchronous


@pytest.mark.parametrize("topology", ["pg_plain", "pg_bouncer"])
@pytest.mark.parametrize("mode", ["database", "rollback"])
def test_tests_never_see_each_others_rows(inner: pytest.Pytester, mode: str, topology: str) -> None:
    inner.makeconftest(METADATA_SCHEMA)
    if topology == "pg_bouncer":
        # The same tests through PgBouncer in transaction mode.
        engines = WRITE_AND_COUNT.replace("pg_sync_engine", "pgbouncer_sync_engine")
        inner.makepyfile(engines.replace("pg_engine", "pgbouncer_engine"))
    else:
        inner.makepyfile(WRITE_AND_COUNT)
    result = inner.runpytest("--pgtopo-driver=all", f"--pgtopo-isolation={mode}")
    result.assert_outcomes(passed=_expected_runs("all"))


@pytest.mark.parametrize(
    "schema_fixture",
    [
        pytest.param(
            """
import pytest
from pathlib import Path

@pytest.fixture(scope="session")
def pgtopo_schema():
    path = Path(__file__).parent / "schema.sql"
    path.write_text("CREATE TABLE items (id serial PRIMARY KEY, label text);\\n"
                    "CREATE INDEX items_label ON items (label);")
    return path
""",
            id="sql-file",
        ),
        pytest.param(
            """
import pytest
import sqlalchemy as sa

@pytest.fixture(scope="session")
def pgtopo_schema():
    def load(engine):
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE items (id serial PRIMARY KEY, label text)"))
            conn.execute(sa.text("INSERT INTO items (label) VALUES ('seed')"))
            conn.execute(sa.text("DELETE FROM items"))
    return load
""",
            id="callable",
        ),
        pytest.param(METADATA_SCHEMA, id="metadata"),
    ],
)
def test_schema_loads_once_into_the_template(inner: pytest.Pytester, schema_fixture: str) -> None:
    inner.makeconftest(schema_fixture)
    inner.makepyfile(WRITE_AND_COUNT)
    result = inner.runpytest("--pgtopo-driver=pg8000,asyncpg")
    result.assert_outcomes(passed=_expected_runs("pg8000") + _expected_runs("asyncpg"))


def test_bad_schema_value_is_explained(inner: pytest.Pytester) -> None:
    inner.makeconftest(
        """
import pytest

@pytest.fixture(scope="session")
def pgtopo_schema():
    return "does/not/exist.sql"
"""
    )
    inner.makepyfile("def test_x(pg_sync_engine): pass")
    result = inner.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*pgtopo_schema names the SQL file 'does/not/exist.sql', which does not exist*"]
    )


def test_sync_and_async_engines_of_one_test_share_its_database(inner: pytest.Pytester) -> None:
    inner.makeconftest(METADATA_SCHEMA)
    inner.makepyfile(
        """
        import sqlalchemy as sa

        async def test_both(pg_engine, pg_sync_engine, pg_plain_database):
            with pg_sync_engine.begin() as conn:
                conn.execute(sa.text("INSERT INTO items (label) VALUES ('x')"))
            async with pg_engine.connect() as conn:
                assert await conn.scalar(sa.text("SELECT current_database()")) == pg_plain_database.dbname
                assert await conn.scalar(sa.text("SELECT count(*) FROM items")) == 1
        """
    )
    inner.runpytest().assert_outcomes(passed=1)


def test_rollback_mode_turns_commit_and_rollback_into_savepoints(inner: pytest.Pytester) -> None:
    inner.makeconftest(METADATA_SCHEMA)
    inner.makepyfile(
        """
        import pytest
        import sqlalchemy as sa

        def test_units(pg_sync_engine, pg_plain_database):
            assert pg_plain_database.dbname.startswith("pgtopo_shared_")
            with pg_sync_engine.begin() as conn:
                conn.execute(sa.text("INSERT INTO items (label) VALUES ('kept')"))
            with pg_sync_engine.connect() as conn:
                conn.execute(sa.text("INSERT INTO items (label) VALUES ('undone')"))
                conn.rollback()
            with pytest.raises(sa.exc.IntegrityError):
                with pg_sync_engine.begin() as conn:
                    conn.execute(sa.text("INSERT INTO items (id, label) VALUES (1, 'dup'), (1, 'dup')"))
            with pg_sync_engine.connect() as conn:
                assert conn.scalars(sa.text("SELECT label FROM items")).all() == ["kept"]

        async def test_units_async(pg_engine):
            async with pg_engine.begin() as conn:
                await conn.execute(sa.text("INSERT INTO items (label) VALUES ('kept')"))
            async with pg_engine.connect() as conn:
                await conn.execute(sa.text("INSERT INTO items (label) VALUES ('undone')"))
                await conn.rollback()
            async with pg_engine.connect() as conn:
                assert (await conn.scalars(sa.text("SELECT label FROM items"))).all() == ["kept"]
        """
    )
    result = inner.runpytest("--pgtopo-isolation=rollback", "--pgtopo-driver=all")
    result.assert_outcomes(passed=_expected_runs("all") // 2)


def test_databases_are_created_from_the_template_and_dropped(
    pg_plain: PlainTopology, pgtopo_session: PgtopoSession
) -> None:
    databases = pgtopo_session.databases(pg_plain)
    admin = pg_plain.server.admin
    names = [databases.create("test_some thing[psycopg]") for _ in range(3)]
    assert len(set(names)) == 3
    assert all(
        re.fullmatch(r"pgtopo_[0-9a-f]{8}_\d+_test_some_thing_psycopg", name) for name in names
    )
    listed = "SELECT count(*) FROM pg_database WHERE datname = ANY(string_to_array('{}', ','))"
    assert admin.scalar(listed.format(",".join(names))) == 3
    for name in names:
        databases.drop_later(name)
    databases.wait_for_drops()
    assert admin.scalar(listed.format(",".join(names))) == 0


def test_keep_leaves_servers_and_the_failed_database_and_says_how_to_reach_them(
    inner: pytest.Pytester,
) -> None:
    inner.makepyfile(
        """
        import sqlalchemy as sa

        def test_fails(pg_sync_engine):
            with pg_sync_engine.begin() as conn:
                conn.execute(sa.text("CREATE TABLE evidence (note text)"))
                conn.execute(sa.text("INSERT INTO evidence VALUES ('look here')"))
            assert False, "keep my database"

        def test_passes(pg_sync_engine):
            pass
        """
    )
    # A subprocess, as in real use: the kept server outlives pytest and is reparented.
    result = inner.runpytest_subprocess("--pgtopo-keep")
    result.assert_outcomes(passed=1, failed=1)
    output = result.stdout.str()
    kept = re.search(r"kept database of failed \S+::test_fails: (postgresql://\S+)", output)
    cleanup = re.search(r"stop them with: (.+)", output)
    assert kept, output
    assert cleanup, output
    assert "pg_plain primary: postgresql://" in output
    import psycopg

    try:
        with psycopg.connect(kept.group(1)) as conn:
            assert conn.execute("SELECT note FROM evidence").fetchone() == ("look here",)
    finally:
        subprocess.run(cleanup.group(1), shell=True, check=True, timeout=60)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(kept.group(1), connect_timeout=2)


@pytest.mark.parametrize("mode", ["database", "rollback"])
def test_each_directory_gets_the_schema_its_conftest_names(
    inner: pytest.Pytester, mode: str
) -> None:
    for directory, table in (("billing", "invoices"), ("shipping", "parcels")):
        inner.mkpydir(directory)
        (inner.path / directory / "conftest.py").write_text(
            "import pytest\n"
            "@pytest.fixture(scope='session')\n"
            "def pgtopo_schema():\n"
            "    def load(engine):\n"
            "        with engine.begin() as conn:\n"
            f"            conn.exec_driver_sql('CREATE TABLE {table} (id int)')\n"
            "    return load\n"
        )
        (inner.path / directory / f"test_{directory}.py").write_text(
            "import sqlalchemy as sa\n"
            f"def test_tables_{directory}(pg_sync_engine):\n"
            "    with pg_sync_engine.connect() as conn:\n"
            "        tables = conn.scalars(sa.text(\"SELECT tablename FROM pg_tables WHERE schemaname = 'public'\")).all()\n"
            f"    assert tables == ['{table}']\n"
        )
    inner.runpytest(f"--pgtopo-isolation={mode}").assert_outcomes(passed=2)


def test_rollback_isolation_refuses_the_replica_pair_at_setup(inner: pytest.Pytester) -> None:
    # A replica only ever sees committed work, and rollback mode never commits the test's outer
    # transaction: refused at setup, saying why and what to do, before any test body runs.
    inner.makepyfile(
        """
        from pathlib import Path

        def test_reads_on_the_replica(primary_sync_engine, replica_sync_engine):
            Path("body-ran").write_text("yes")

        async def test_fails_over(failover_engine):
            Path("body-ran").write_text("yes")

        def test_plain_still_works(pg_sync_engine):
            pass
        """
    )
    result = inner.runpytest("--pgtopo-isolation=rollback")
    result.assert_outcomes(errors=2, passed=1)
    result.stdout.fnmatch_lines(
        [
            "*pytest-pgtopo: --pgtopo-isolation=rollback cannot serve pg_replica_pair: a replica "
            "only sees committed transactions, and rollback isolation never commits a test's "
            "work*--pgtopo-isolation=database*",
        ]
    )
    assert not (inner.path / "body-ran").exists()
