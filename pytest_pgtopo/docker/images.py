"""Images for the docker backend: what one must carry, and `pgtopo image build` from Debian alone.

An image the docker backend runs needs PostgreSQL's server binaries (`postgres`, `initdb`,
`pg_basebackup`; in /usr/lib/postgresql/NN/bin or on PATH), `pgbouncer` (on PATH or in
/usr/sbin), a `postgres` OS user, `/bin/sh` and `base64`. Debian's `postgresql-NN` and
`pgbouncer` packages give all of it.

`build()` makes such an image without any image registry: `debootstrap` a minimal Debian
suite from the Debian mirror this machine's apt already uses, install the two packages in
that root, and `docker import` its tarball. The tarball is cached (default
/var/cache/pytest-pgtopo/images), so a second build is an import of a few seconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, PgtopoError

REPOSITORY = "pytest-pgtopo"
"""Images `pgtopo image build` makes are tagged pytest-pgtopo:pgNN and pytest-pgtopo:SUITE."""
DEFAULT_IMAGE = f"{REPOSITORY}:pg{{major}}"
"""The default --pgtopo-docker-image: one image per PostgreSQL major ({major} is replaced)."""
LABEL_POSTGRES = "org.pytest-pgtopo.postgres"
LABEL_PGBOUNCER = "org.pytest-pgtopo.pgbouncer"
LABEL_SUITE = "org.pytest-pgtopo.debian"
_RECIPE = 2  # Bump when the build steps change: cached tarballs of an older recipe are rebuilt.


@dataclass(frozen=True)
class Suite:
    name: str
    major: int
    """The PostgreSQL major Debian ships in it (its `postgresql` package)."""
    pgbouncer: str
    """PgBouncer's release line there, for messages."""


SUITES = {
    "bookworm": Suite("bookworm", 15, "1.18"),
    "trixie": Suite("trixie", 17, "1.24"),
}


def suite(name: str) -> Suite:
    try:
        return SUITES[name]
    except KeyError:
        raise ConfigError(
            f"unknown Debian suite {name!r} for --debian; choose one of: {', '.join(SUITES)} "
            f"({'; '.join(f'{s.name}: PostgreSQL {s.major} + PgBouncer {s.pgbouncer}' for s in SUITES.values())})"
        ) from None


def default_cache_dir() -> Path:
    """Where built root filesystems are kept: $PGTOPO_IMAGE_CACHE, else
    /var/cache/pytest-pgtopo/images as root, else ~/.cache/pytest-pgtopo/images."""
    configured = os.environ.get("PGTOPO_IMAGE_CACHE")
    if configured:
        return Path(configured)
    if os.geteuid() == 0:
        return Path("/var/cache/pytest-pgtopo/images")
    return Path.home() / ".cache" / "pytest-pgtopo" / "images"


def debian_mirror(apt_dir: Path = Path("/etc/apt")) -> str:
    """The Debian mirror this machine's apt sources name (deb822 or one-line format), else
    deb.debian.org; `PGTOPO_DEBIAN_MIRROR` wins over both."""
    configured = os.environ.get("PGTOPO_DEBIAN_MIRROR")
    if configured:
        return configured.rstrip("/")
    files = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*"))]
    for path in files:
        if path.suffix not in (".list", ".sources"):
            continue
        with contextlib.suppress(OSError):
            text = path.read_text()
            for url in re.findall(r"(?:^URIs:|^deb)\s+(?:\[[^]]*\]\s+)?(\S+)", text, re.M):
                if url.rstrip("/").endswith("/debian"):
                    return str(url).rstrip("/")
    return "http://deb.debian.org/debian"


@dataclass(frozen=True)
class BuiltImage:
    tags: tuple[str, ...]
    image_id: str
    postgres: str
    """`postgres --version`'s number, e.g. 15.14."""
    pgbouncer: str
    from_cache: bool


def build(
    client: Any,
    suite_name: str,
    tags: list[str] | None = None,
    *,
    cache_dir: Path | None = None,
    rebuild: bool = False,
    say: Callable[[str], None] = lambda _: None,
) -> BuiltImage:
    """Build (or import from the cache) the image of `suite_name` and tag it `tags`
    (default: pytest-pgtopo:pgNN and pytest-pgtopo:SUITE)."""
    chosen = suite(suite_name)
    tags = tags or [f"{REPOSITORY}:pg{chosen.major}", f"{REPOSITORY}:{chosen.name}"]
    cache = cache_dir or default_cache_dir()
    tarball = cache / f"{chosen.name}-r{_RECIPE}.tar"
    meta_path = tarball.with_suffix(".json")
    from_cache = tarball.exists() and meta_path.exists() and not rebuild
    if from_cache:
        say(f"using the cached root filesystem {tarball}")
    else:
        _build_rootfs(chosen, cache, tarball, meta_path, say)
    meta = json.loads(meta_path.read_text())
    say(f"importing {tarball} into the Docker engine as {', '.join(tags)}")
    image_id = _import(client, tarball, tags[0], chosen, meta)
    image = client.images.get(image_id)
    for extra in tags[1:]:
        repository, _, tag = extra.rpartition(":") if ":" in extra else (extra, "", "latest")
        image.tag(repository or extra, tag or "latest")
    return BuiltImage(tuple(tags), image_id, meta["postgres"], meta["pgbouncer"], from_cache)


def _build_rootfs(
    chosen: Suite, cache: Path, tarball: Path, meta_path: Path, say: Callable[[str], None]
) -> None:
    if os.geteuid() != 0:
        raise PgtopoError(
            "pgtopo image build needs root (debootstrap and chroot do); run it with sudo, or "
            "build from a Dockerfile where a registry is reachable (see the README)"
        )
    debootstrap = shutil.which("debootstrap") or (
        "/usr/sbin/debootstrap" if Path("/usr/sbin/debootstrap").exists() else None
    )
    if debootstrap is None:
        raise PgtopoError(
            "pgtopo image build needs debootstrap: apt-get install debootstrap "
            "(it is in Debian's and Ubuntu's archives)"
        )
    cache.mkdir(parents=True, exist_ok=True)
    mirror = debian_mirror()
    with tempfile.TemporaryDirectory(prefix=f"build-{chosen.name}-", dir=cache) as scratch:
        root = Path(scratch) / "root"
        say(f"debootstrap {chosen.name} from {mirror} (a few minutes; cached afterwards)")
        _run(
            [debootstrap, "--variant=minbase", chosen.name, str(root), mirror],
            f"debootstrap {chosen.name}",
        )
        # No service starts during installs, and no `main` cluster: the backend makes its own.
        policy = root / "usr/sbin/policy-rc.d"
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        createcluster = root / "etc/postgresql-common/createcluster.d"
        createcluster.mkdir(parents=True, exist_ok=True)
        (createcluster / "pytest-pgtopo.conf").write_text("create_main_cluster = false\n")
        env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "DEBIAN_FRONTEND": "noninteractive",
            "LC_ALL": "C",
            "HOME": "/root",
        }
        packages = [f"postgresql-{chosen.major}", "pgbouncer"]
        say(f"installing {' '.join(packages)} in the {chosen.name} root")
        _run(["chroot", str(root), "apt-get", "update", "-qq"], "apt-get update", env)
        _run(
            [
                "chroot",
                str(root),
                "apt-get",
                "install",
                "-y",
                "-qq",
                "--no-install-recommends",
                *packages,
            ],
            f"apt-get install {' '.join(packages)}",
            env,
        )
        bindir = f"/usr/lib/postgresql/{chosen.major}/bin"
        postgres = _version(
            _run(["chroot", str(root), f"{bindir}/postgres", "--version"], "postgres", env)
        )
        pgbouncer = _version(
            _run(["chroot", str(root), "pgbouncer", "--version"], "pgbouncer", env)
        )
        _run(["chroot", str(root), "apt-get", "clean"], "apt-get clean", env)
        shutil.rmtree(root / "var/lib/apt/lists", ignore_errors=True)
        (root / "var/lib/apt/lists/partial").mkdir(parents=True)
        _trim(root, chosen)
        say(f"PostgreSQL {postgres}, PgBouncer {pgbouncer}; writing {tarball}")
        partial = tarball.with_suffix(".tar.partial")
        _run(["tar", "-C", str(root), "-cf", str(partial), "."], "tar of the root filesystem")
        meta_path.write_text(
            json.dumps(
                {
                    "suite": chosen.name,
                    "postgres": postgres,
                    "pgbouncer": pgbouncer,
                    "mirror": mirror,
                }
            )
        )
        partial.rename(tarball)


# Every container of the vfs storage driver (dockerd --storage-driver=vfs) is a full copy of its
# image: a smaller image starts faster. None of this is used by a test server: the LLVM JIT
# (about 135 MB; without llvmjit.so PostgreSQL simply does not JIT, as with jit=off),
# translations, locale sources, documentation, apt's caches, Perl's C headers.
_TRIM = (
    "var/cache/apt",
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/i18n",
    "usr/lib/postgresql/{major}/lib/bitcode",
    "usr/lib/postgresql/{major}/lib/llvmjit.so",
    "usr/lib/postgresql/{major}/lib/llvmjit_types.bc",
    "usr/lib/x86_64-linux-gnu/libLLVM*",
    "usr/lib/x86_64-linux-gnu/libz3.so*",
    "usr/lib/aarch64-linux-gnu/libLLVM*",
    "usr/lib/aarch64-linux-gnu/libz3.so*",
    "usr/lib/*/perl/5.*/CORE",
)


def _trim(root: Path, chosen: Suite) -> None:
    for pattern in _TRIM:
        for path in root.glob(pattern.format(major=chosen.major)):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def _import(client: Any, tarball: Path, tag: str, chosen: Suite, meta: dict[str, str]) -> str:
    repository, _, version_tag = tag.rpartition(":") if ":" in tag else (tag, "", "latest")
    bindir = f"/usr/lib/postgresql/{chosen.major}/bin"
    changes = [
        f"ENV PATH={bindir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "ENV LC_ALL=C.UTF-8",
        f"LABEL {LABEL_POSTGRES}={meta['postgres']}",
        f"LABEL {LABEL_PGBOUNCER}={meta['pgbouncer']}",
        f"LABEL {LABEL_SUITE}={chosen.name}",
        'CMD ["/bin/bash"]',
    ]
    result = client.api.import_image_from_file(
        str(tarball), repository=repository or tag, tag=version_tag or "latest", changes=changes
    )
    # The engine answers with JSON lines; the last carries the new image's id ("status").
    found = re.findall(r"sha256:[0-9a-f]{64}", str(result))
    if not found:
        raise PgtopoError(f"docker import of {tarball} gave no image id: {result!r}")
    return str(found[-1])


def dockerfile(chosen: Suite) -> str:
    """The same image as a Dockerfile, for machines that reach Docker Hub but have no debootstrap
    (macOS, Windows): `docker build -t pytest-pgtopo:pgNN -` with this on stdin."""
    bindir = f"/usr/lib/postgresql/{chosen.major}/bin"
    return (
        f"FROM debian:{chosen.name}-slim\n"
        "RUN mkdir -p /etc/postgresql-common/createcluster.d \\\n"
        " && echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.d/pytest-pgtopo.conf \\\n"
        " && apt-get update -qq \\\n"
        f" && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql-{chosen.major} pgbouncer \\\n"
        " && rm -rf /var/lib/apt/lists/*\n"
        f"ENV PATH={bindir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
        f"LABEL {LABEL_SUITE}={chosen.name}\n"
    )


def _version(output: str) -> str:
    found = re.search(r"(\d+\.\d+(?:\.\d+)?)", output)
    return found.group(1) if found else output.strip()


def _run(argv: list[str], what: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-20:])
        raise PgtopoError(f"{what} failed (exit {result.returncode}): {' '.join(argv)}\n{tail}")
    return result.stdout + result.stderr
