"""Each option through each channel (CLI, ini, env), their precedence, and bad values."""

from __future__ import annotations

import pytest

PRINT_CONFIG = """
def test_show(pytestconfig):
    from pytest_pgtopo.plugin import SESSION_KEY
    cfg = pytestconfig.stash[SESSION_KEY].config
    import os
    bindirs = os.pathsep.join(map(str, cfg.pg_bindir)) or None
    print("CONFIG", cfg.backend, ",".join(cfg.driver), cfg.keep, cfg.isolation, bindirs,
          cfg.pgbouncer_bin, cfg.tmpdir, *([cfg.audit] if cfg.audit != "off" else []))
    print("SOURCES", dict(cfg.sources))
"""


def _config_line(result: pytest.RunResult) -> str:
    lines = [line[line.index("CONFIG ") :] for line in result.outlines if "CONFIG " in line]
    assert lines, result.stdout.str()
    return lines[0]


def test_defaults(inner: pytest.Pytester) -> None:
    inner.makepyfile(PRINT_CONFIG)
    result = inner.runpytest("-s")
    result.assert_outcomes(passed=1)
    assert _config_line(result) == "CONFIG auto  False database None None None"


@pytest.mark.parametrize(
    ("key", "cli", "value", "expected"),
    [
        ("backend", "--pgtopo-backend", "local", "CONFIG local  False database None None None"),
        (
            "driver",
            "--pgtopo-driver",
            "pg8000,psycopg2",
            "CONFIG auto pg8000,psycopg2 False database None None None",
        ),
        (
            "isolation",
            "--pgtopo-isolation",
            "rollback",
            "CONFIG auto  False rollback None None None",
        ),
        ("keep", "--pgtopo-keep", "yes", "CONFIG auto  True database None None None"),
        ("pg_bindir", "--pgtopo-pg-bindir", "/usr", "CONFIG auto  False database /usr None None"),
        (
            "pgbouncer_bin",
            "--pgtopo-pgbouncer-bin",
            "/bin/sh",
            "CONFIG auto  False database None /bin/sh None",
        ),
        ("tmpdir", "--pgtopo-tmpdir", "/tmp", "CONFIG auto  False database None None /tmp"),
        ("audit", "--pgtopo-audit", "warn", "CONFIG auto  False database None None None warn"),
    ],
)
@pytest.mark.parametrize("channel", ["cli", "ini", "env"])
def test_each_option_through_each_channel(
    inner: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    key: str,
    cli: str,
    value: str,
    expected: str,
    channel: str,
) -> None:
    inner.makepyfile(PRINT_CONFIG)
    args = ["-s"]
    if channel == "cli":
        args += [cli] if key == "keep" else [f"{cli}={value}"]
        source = cli
    elif channel == "ini":
        args += ["-o", f"pgtopo_{key}={value}"]
        source = f"ini pgtopo_{key}"
    else:
        monkeypatch.setenv(f"PGTOPO_{key.upper()}", value)
        source = f"env PGTOPO_{key.upper()}"
    result = inner.runpytest(*args)
    result.assert_outcomes(passed=1)
    assert _config_line(result) == expected
    result.stdout.fnmatch_lines([f"SOURCES *'{key}': '{source}'*"])


def test_precedence_cli_over_ini_over_env(
    inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    inner.makepyfile(PRINT_CONFIG)
    monkeypatch.setenv("PGTOPO_ISOLATION", "rollback")
    monkeypatch.setenv("PGTOPO_DRIVER", "pg8000")
    monkeypatch.setenv("PGTOPO_BACKEND", "docker")
    result = inner.runpytest(
        "-s",
        "-o",
        "pgtopo_driver=psycopg2",
        "-o",
        "pgtopo_backend=external",
        "--pgtopo-backend=local",
    )
    result.assert_outcomes(passed=1)
    # backend: CLI beats ini and env; driver: ini beats env; isolation: env beats the default.
    assert _config_line(result) == "CONFIG local psycopg2 False rollback None None None"


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (
            ["--pgtopo-backend=kubernetes"],
            {},
            "--pgtopo-backend='kubernetes' is invalid: expected one of: auto, local, docker, external",
        ),
        (
            [],
            {"PGTOPO_ISOLATION": "savepoint"},
            "env PGTOPO_ISOLATION='savepoint' is invalid: expected one of: database, rollback",
        ),
        (
            ["-o", "pgtopo_driver=mysqlclient"],
            {},
            "ini pgtopo_driver='mysqlclient' is invalid: unknown driver 'mysqlclient'*",
        ),
        ([], {"PGTOPO_KEEP": "maybe"}, "env PGTOPO_KEEP='maybe' is invalid: expected a boolean*"),
        (
            ["--pgtopo-pgbouncer-bin=/etc/passwd"],
            {},
            "--pgtopo-pgbouncer-bin='/etc/passwd' is invalid: expected an executable file",
        ),
        (
            ["--pgtopo-pg-bindir=/nonexistent/bin"],
            {},
            "--pgtopo-pg-bindir='/nonexistent/bin' is invalid: expected an existing directory",
        ),
        (
            ["--pgtopo-pg-bindir=/usr/lib/postgresql/15/bin:/nonexistent/bin"],
            {},
            "--pgtopo-pg-bindir='/usr/lib/postgresql/15/bin:/nonexistent/bin' is invalid: "
            "expected existing directories separated by ':'; '/nonexistent/bin' is not one",
        ),
    ],
)
def test_bad_value_is_a_usage_error_naming_option_and_value(
    inner: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    env: dict[str, str],
    message: str,
) -> None:
    inner.makepyfile("def test_never_runs(): pass")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = inner.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: pytest-pgtopo: {message}"])


def test_all_selects_every_installed_driver(inner: pytest.Pytester) -> None:
    from pytest_pgtopo import drivers

    inner.makepyfile(PRINT_CONFIG)
    result = inner.runpytest("-s", "--pgtopo-driver=all")
    result.assert_outcomes(passed=1)
    assert _config_line(result).split()[2] == ",".join(drivers.installed())


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("99", "*99 is not a PostgreSQL major this plugin supports (14-18)*"),
        ("abc", "*'abc' is not a PostgreSQL major version*"),
        ("15,", "*has an empty entry*"),
        ("14", "*asks for PostgreSQL 14, which is not installed*"),
    ],
)
def test_a_postgres_version_that_cannot_run_is_a_usage_error(
    inner: pytest.Pytester, value: str, message: str
) -> None:
    if value == "14":
        from pytest_pgtopo.servers.binaries import find_all_pg_binaries

        if 14 in find_all_pg_binaries():
            pytest.skip("PostgreSQL 14 is installed here, so asking for it is no error")
    inner.makepyfile("def test_never_runs(): pass")
    result = inner.runpytest(f"--pgtopo-pg-version={value}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: pytest-pgtopo: --pgtopo-pg-version={message}"])
