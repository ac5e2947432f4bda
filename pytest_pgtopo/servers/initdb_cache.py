"""initdb once per server version and options; every later server starts from a copy.

initdb costs ~0.9 s, a copy of its result ~0.15 s (measured on Debian 12, PostgreSQL 15). The cache entry is filled in a
private staging directory and renamed into place, so pytest processes that race to fill it
(xdist workers, parallel tox envs) never see half a cluster: the loser discards its copy.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..runners import local
from ..runners.local import OsUser
from .binaries import PgBinaries
from .wheel_binaries import default_cache_root as default_cache_root

SUPERUSER = "pgtopo"
# Every flag here exists in initdb 14 through 18 (checked against each one's --help).
INITDB_ARGS = (
    f"--username={SUPERUSER}",
    "--auth=scram-sha-256",
    "--encoding=UTF8",
    "--locale=C",
    "--no-sync",  # A test cluster never needs to survive a power cut.
    # PostgreSQL 18 turns data checksums on by default, 14-17 off. Asking for them explicitly
    # makes every major behave alike, and like 18 and most production clusters (pg_rewind works
    # without wal_log_hints). --data-checksums exists on 14-18; --no-data-checksums only on 18+.
    # It cost nothing measurable: initdb 0.41-0.46 s with or without, PostgreSQL 15 on tmpfs.
    "--data-checksums",
)


def cache_key(binaries: PgBinaries, user: OsUser) -> str:
    """The name of a cache entry: a new one for another major, build, bindir, user or options."""
    key_source = "\n".join(
        [str(binaries.major), binaries.version, str(binaries.bindir), user.name, *INITDB_ARGS]
    )
    digest = hashlib.sha256(key_source.encode()).hexdigest()[:16]
    return f"pg{binaries.major}-{binaries.short_version}-{digest}"


@dataclass(frozen=True)
class CachedCluster:
    data_dir: Path
    password: str
    """The bootstrap superuser's password in the cached copy; each server rotates it on start."""

    def copy_to(self, target: Path, user: OsUser) -> None:
        """Copy the cached data directory to `target`, owned by `user` and mode 0700."""
        try:
            # cp -a is several times faster than copytree for ~1000 small files, and keeps owners.
            subprocess.run(
                ["cp", "-a", str(self.data_dir), str(target)], check=True, capture_output=True
            )
        except (OSError, subprocess.CalledProcessError):
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(self.data_dir, target, symlinks=True)
        if target.stat().st_uid != user.uid:  # cp -a already kept the cache's owner otherwise.
            local.chown_tree(target, user)
        target.chmod(0o700)


def cached_cluster(
    binaries: PgBinaries, user: OsUser, cache_root: Path, staging: Path
) -> CachedCluster:
    """Return the cache entry for these binaries, running initdb in `staging` if it is missing."""
    entry = cache_root / cache_key(binaries, user)
    cached = _read(entry)
    if cached is not None:
        return cached

    password = secrets.token_urlsafe(24)
    pwfile = staging / "initdb.pw"
    pwfile.write_text(password)
    local.chown_tree(staging, user)
    local.run(
        [binaries["initdb"], "-D", str(staging / "data"), f"--pwfile={pwfile}", *INITDB_ARGS],
        user=user,
        cwd=staging,
    )
    pwfile.unlink()

    cache_root.mkdir(parents=True, exist_ok=True, mode=0o700)
    filling = cache_root / f".filling-{os.getpid()}-{secrets.token_hex(4)}"
    filling.mkdir(mode=0o700)
    try:
        CachedCluster(staging / "data", password).copy_to(filling / "data", user)
        (filling / "password").write_text(password)
        (filling / "password").chmod(0o600)
        # If another process filled the entry first, theirs is as good as ours.
        with contextlib.suppress(OSError):
            filling.rename(entry)
    finally:
        shutil.rmtree(filling, ignore_errors=True)
        shutil.rmtree(staging / "data", ignore_errors=True)
    result = _read(entry)
    assert result is not None, f"cache entry {entry} is incomplete after filling it"
    return result


def _read(entry: Path) -> CachedCluster | None:
    if (entry / "data" / "PG_VERSION").is_file() and (entry / "password").is_file():
        return CachedCluster(entry / "data", (entry / "password").read_text())
    return None
