"""--pgtopo-backend=external: pg_plain on a server the plugin does not run.

The "external" server here is this session's own pg_plain: real, and not the inner run's.
"""

from __future__ import annotations

import dataclasses
import time

import pytest

from pytest_pgtopo import drivers
from pytest_pgtopo.backends.external import ExternalBackend
from pytest_pgtopo.errors import PgtopoError
from pytest_pgtopo.session import PgtopoSession
from pytest_pgtopo.topologies.plain import PlainTopology

INNER = """
import sqlalchemy as sa

def test_engines_use_the_external_server(pg_sync_engine, pg_plain):
    with pg_sync_engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE t (i int)"))
        assert conn.scalar(sa.text("SHOW port")) == "{port}"

async def test_async_too(pg_engine):
    async with pg_engine.connect() as conn:
        assert await conn.scalar(sa.text("SHOW port")) == "{port}"

def test_other_topologies_skip(pg_bouncer):
    pass
"""


def test_external_backend_serves_pg_plain_and_skips_the_rest(
    inner: pytest.Pytester, pg_plain: PlainTopology, pgtopo_session: PgtopoSession
) -> None:
    # Earlier tests' databases may still be dropping in the background: let them go first.
    pgtopo_session.databases(pg_plain).wait_for_drops()
    before = _databases(pg_plain)
    inner.makepyfile(INNER.replace("{port}", str(pg_plain.primary.port)))
    result = inner.runpytest(
        "-rs", "--pgtopo-backend=external", f"--pgtopo-external-url={pg_plain.primary.describe()}"
    )
    result.assert_outcomes(passed=2, skipped=1)
    result.stdout.fnmatch_lines(
        [
            f"pgtopo: backend=external (127.0.0.1:{pg_plain.primary.port}), "
            "drivers=defaults (asyncpg async, psycopg sync), isolation=database",
            "*the bouncer topology needs servers pytest-pgtopo starts itself; "
            "--pgtopo-backend=external provides pg_plain only*",
        ]
    )
    # The external server still runs, and the run took its databases (templates too) away.
    assert pg_plain.server.admin.scalar("SELECT 1") == 1
    assert _databases(pg_plain) == before


def _databases(topology: PlainTopology) -> str:
    return str(
        topology.server.admin.scalar(
            "SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database"
        )
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--pgtopo-backend=external"],
            "ERROR: pytest-pgtopo: --pgtopo-backend=external needs the server's URL: "
            "--pgtopo-external-url (ini pgtopo_external_url, env PGTOPO_EXTERNAL_URL)",
        ),
        (
            ["--pgtopo-backend=docker", "--pgtopo-pg-version=all"],
            "ERROR: pytest-pgtopo: --pgtopo-pg-version=all says which servers are installed here; "
            "with --pgtopo-backend=docker name the majors (NN[,NN...]), each run in the image "
            "--pgtopo-docker-image names for it",
        ),
    ],
)
def test_backends_that_cannot_work_are_usage_errors(
    inner: pytest.Pytester, args: list[str], message: str
) -> None:
    inner.makepyfile("def test_x(): pass")
    result = inner.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


ADMIN_DRIVERS = [name for name in drivers.ADMIN_DRIVER_ORDER if drivers.get(name).is_installed()]


@pytest.mark.parametrize("driver", ADMIN_DRIVERS)
@pytest.mark.parametrize(
    ("change", "said", "fix"),
    [
        (
            {"password": "not-the-password"},
            'password authentication failed for user "{user}" (SQLSTATE 28P01)',
            "check the user and password in --pgtopo-external-url",
        ),
        (
            {"dbname": "no_such_database"},
            'database "no_such_database" does not exist (SQLSTATE 3D000)',
            "name a database that exists (postgres, say) in --pgtopo-external-url",
        ),
    ],
    ids=["wrong-password", "no-such-database"],
)
def test_a_refused_login_fails_at_once_naming_the_url(
    pg_plain: PlainTopology,
    monkeypatch: pytest.MonkeyPatch,
    driver: str,
    change: dict[str, str],
    said: str,
    fix: str,
) -> None:
    # Each admin driver raises its own exception for a refused login (psycopg and psycopg2 carry
    # no SQLSTATE for it at all); none of them may retry for the whole connect timeout.
    monkeypatch.setattr(drivers, "ADMIN_DRIVER_ORDER", (driver,))
    wrong = dataclasses.replace(pg_plain.primary, **change)
    backend = ExternalBackend(wrong.describe())
    started = time.monotonic()
    with pytest.raises(PgtopoError) as refused:
        backend.start_postgres("plain")
    assert time.monotonic() - started < 5
    message = str(refused.value)
    masked = f"postgresql://{wrong.user}:***@{wrong.host}:{wrong.port}/{wrong.dbname}"
    assert message.startswith(f"the external server {masked} refused the login: "), message
    assert said.format(user=wrong.user) in message
    assert fix in message
    assert wrong.password not in message


def test_a_wrong_password_errors_every_test_at_once(
    inner: pytest.Pytester, pg_plain: PlainTopology
) -> None:
    inner.makepyfile(
        """
        def test_one(pg_sync_engine):
            pass

        async def test_two(pg_engine):
            pass
        """
    )
    wrong = dataclasses.replace(pg_plain.primary, password="not-the-password")
    started = time.monotonic()
    result = inner.runpytest(
        "--pgtopo-backend=external", f"--pgtopo-external-url={wrong.describe()}"
    )
    assert time.monotonic() - started < 20, "a refused login is final, not retried for 30 s"
    result.assert_outcomes(errors=2)
    masked = f"postgresql://{wrong.user}:***@{wrong.host}:{wrong.port}/postgres"
    result.stdout.fnmatch_lines([f"*the external server {masked} refused the login: *"])
    assert "not-the-password" not in result.stdout.str()
