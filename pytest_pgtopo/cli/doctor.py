"""`pgtopo doctor`: what this machine can run, and the command that installs what is missing."""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import shutil
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from .. import drivers
from ..config import PgtopoConfig
from ..errors import BinaryNotFoundError, PgtopoError
from ..runners import local
from ..runners.host import default_root
from ..runners.local import OsUser
from ..servers.binaries import PgBinaries, find_all_pg_binaries
from ..servers.haproxy import find_haproxy
from ..servers.haproxy import version as haproxy_version
from ..servers.initdb_cache import default_cache_root
from ..servers.pgbouncer import PgBouncerBinary, find_pgbouncer
from ..session import PgtopoSession
from ..workspace import MIN_FREE, check_root
from .common import DEFAULT_TOPOLOGIES, PROG, TOPOLOGIES, _config


def _doctor(args: argparse.Namespace) -> int:
    config = _config()
    session = PgtopoSession(config)
    out: list[str] = [f"{PROG} doctor (pytest-pgtopo {_version('pytest-pgtopo')})", ""]

    # PostgreSQL: every build found, and the one topologies use.
    build: PgBinaries | None = None
    pg_problem: str | None = None
    try:
        build = session.server_builds()[0]
    except PgtopoError as exc:
        pg_problem = str(exc)
    try:
        found = find_all_pg_binaries(config.pg_bindir, config.source_of("pg_bindir"))
    except BinaryNotFoundError:
        found = {}  # An unusable --pg-bindir: pg_problem says so.
    out.append("PostgreSQL builds (major, version, source, bindir, OpenSSL):")
    for major, found_build in found.items():
        used = "  <- used" if build is not None and found_build.bindir == build.bindir else ""
        ssl_text = "OpenSSL" if found_build.has_ssl() else "no OpenSSL (tls cannot run)"
        out.append(
            f"  {major}  {found_build.short_version:<8} {found_build.source:<20} "
            f"{found_build.bindir}  {ssl_text}{used}"
        )
    if not found:
        out.append("  none found")
    if pg_problem:
        out += _indented(pg_problem)
    out.append("")

    # PgBouncer.
    pgbouncer: PgBouncerBinary | None = None
    pgbouncer_problem: str | None = None
    try:
        pgbouncer = find_pgbouncer(config.pgbouncer_bin, config.source_of("pgbouncer_bin"))
    except PgtopoError as exc:
        pgbouncer_problem = str(exc)
    if pgbouncer is not None:
        out.append(
            f"PgBouncer: {pgbouncer.version_string} at {pgbouncer.path} ({pgbouncer.source})"
        )
    else:
        out.append("PgBouncer: none usable")
        out += _indented(pgbouncer_problem or "")
    haproxy_problem: str | None = None
    try:
        haproxy = find_haproxy()
        out.append(f"HAProxy: {haproxy_version(haproxy)} at {haproxy} (pg_ha only)")
    except PgtopoError as exc:
        haproxy_problem = str(exc)
        out += ["HAProxy: none (pg_ha cannot run)", *_indented(haproxy_problem)]
    out.append("")

    # Where servers run: the OS user and the temp dir.
    user: OsUser | None = None
    user_problem: str | None = None
    try:
        user = local.server_user()
    except PgtopoError as exc:
        user_problem = str(exc)
    if user is None:
        out += ["Servers' OS user: none", *_indented(user_problem or "")]
    elif user.is_current:
        out.append(f"Servers' OS user: {user.name} (uid {user.uid}), the current user")
    else:
        out.append(
            f"Servers' OS user: {user.name} (uid {user.uid}): this runs as root, which "
            "PostgreSQL refuses (PGTOPO_SERVER_USER chooses another)"
        )
    tmp_problem = _temp_dir_report(config, user, out)
    out.append(f"initdb cache: {default_cache_root()} (PGTOPO_CACHE_DIR; delete it to re-initdb)")
    out.append("")

    # What can run.
    plain = pg_problem or user_problem or tmp_problem
    ssl_problem = None
    if build is not None and not build.has_ssl():
        ssl_problem = (
            f"{build.describe()} is built without OpenSSL; install a build with it: "
            "apt-get install postgresql, brew install postgresql@16, or "
            "pip install 'pytest-pgtopo[server]'"
        )
    basebackup_problem = None
    if build is not None and not (build.bindir / "pg_basebackup").is_file():
        basebackup_problem = f"{build.bindir} has no pg_basebackup"
    cannot = {
        "plain": plain,
        "bouncer": plain or pgbouncer_problem,
        "tls": plain or ssl_problem,
        "replica": plain or basebackup_problem,
        "ha": plain or basebackup_problem or haproxy_problem,
    }
    out.append("Backends:")
    out.append(f"  local     {'usable' if plain is None else 'not usable: ' + _first_line(plain)}")
    out.append(f"  docker    {_docker()}")
    out.append(f"  external  {_external()}")
    out.append("")
    out.append("Drivers:")
    for name, driver in drivers.DRIVERS.items():
        if driver.is_installed():
            out.append(f"  {name:<9} {_driver_version(driver.module)}")
        else:
            out.append(f"  {name:<9} not installed: pip install 'pytest-pgtopo[{name}]'")
    out.append("")
    out.append("Topologies (pgtopo up NAME, and the fixtures):")
    for name in TOPOLOGIES:
        reason = cannot[name]
        out.append(
            f"  {name:<9} {'can run' if reason is None else 'cannot run: ' + _first_line(reason)}"
        )
    out.append("")
    failed = [name for name in DEFAULT_TOPOLOGIES if cannot[name] is not None]
    if failed:
        out.append(
            f"Cannot run: {', '.join(failed)} (of the default topologies "
            f"{', '.join(DEFAULT_TOPOLOGIES)}). Each reason and how to install what is missing "
            "are above."
        )
    else:
        out.append(f"OK: the default topologies ({', '.join(DEFAULT_TOPOLOGIES)}) can run.")
    print("\n".join(out), flush=True)
    return 1 if failed else 0


def _temp_dir_report(config: PgtopoConfig, user: OsUser | None, out: list[str]) -> str | None:
    root = config.tmpdir or default_root()
    source = config.source_of("tmpdir")
    where = "default" if source == "default" else source
    try:
        free = f"{shutil.disk_usage(root).free / (1 << 30):.1f} GiB free"
    except OSError as exc:
        free = f"free space unknown ({exc.strerror})"
    kind = _filesystem(root)
    out.append(f"Temp dir: {root} ({where}{', ' + kind if kind else ''}), {free}")
    if user is None:
        return None
    try:
        check_root(root, user, source)
    except PgtopoError as exc:
        out += _indented(str(exc))
        return str(exc)
    if kind != "tmpfs":
        out.append(
            f"  not a tmpfs: works, but CREATE DATABASE is several times slower than on /dev/shm "
            f"(needs {MIN_FREE >> 20} MiB at least; 1 GiB free there makes it the default)"
        )
    return None


def _filesystem(path: Path) -> str:
    """The type of the filesystem `path` is on (from /proc/self/mounts), or '' where unknown."""
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
        real = path.resolve()
    except OSError:
        return ""
    best, kind = -1, ""
    for line in mounts:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = Path(fields[1].replace("\\040", " "))
        if (point == real or point in real.parents) and len(str(point)) > best:
            best, kind = len(str(point)), fields[2]
    return kind


def _external() -> str:
    raw = os.environ.get("PGTOPO_EXTERNAL_URL")
    if not raw:
        return (
            "needs --pgtopo-external-url (ini pgtopo_external_url, env PGTOPO_EXTERNAL_URL) "
            "with --pgtopo-backend=external"
        )
    try:
        shown = make_url(raw).render_as_string(hide_password=True)
    except ArgumentError:
        return f"env PGTOPO_EXTERNAL_URL is set but is not a URL: {raw!r}"
    return f"configured by env PGTOPO_EXTERNAL_URL={shown} (not contacted)"


def _driver_version(module: str) -> str:
    for distribution in importlib.metadata.packages_distributions().get(module, [module]):
        return f"{_version(distribution)} ({distribution})"
    return "installed"


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "version unknown"


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0].rstrip(":") if text.strip() else text


def _indented(text: str) -> list[str]:
    return [f"  {line}" for line in text.splitlines()]


def _docker() -> str:
    """The docker backend: usable (the engine, its pytest-pgtopo images) or why not."""
    from ..docker.engine import connect, unreachable_reason
    from ..docker.images import REPOSITORY

    reason = unreachable_reason()
    if reason is not None:
        return f"not usable: {_first_line(reason).removeprefix('pytest-pgtopo: ')}"
    engine = connect()
    tags = sorted(
        tag
        for image in engine.client.images.list(name=REPOSITORY)
        for tag in image.tags
        if ":pg" in tag
    )
    found = ", ".join(tags) if tags else "none yet: build one with `pgtopo image build`"
    return f"usable: {engine.describe()}; images {found}"
