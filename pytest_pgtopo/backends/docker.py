"""The docker backend: every server of a topology (PostgreSQL, the standby, PgBouncer) in its
own container, started through testcontainers, ready when a real login succeeds.

The topologies are the same as on the local backend (they hold handles of this backend's
servers); only where each process runs differs. Containers are named before they exist and
given to the run's watchdog, so they are removed even when pytest is killed with SIGKILL;
testcontainers' reaper (Ryuk) is used as well where its image is present.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import tempfile
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any

from ..docker import engine as docker_engine
from ..docker.containers import LABEL_OWNER, LABEL_RUN, Placement
from ..docker.engine import Engine
from ..docker.images import DEFAULT_IMAGE, REPOSITORY, default_cache_dir
from ..docker.servers import DockerPgBouncer, DockerPostgres, ImageTools
from ..endpoint import Endpoint
from ..errors import ConfigError, PgtopoError
from ..pgbouncer_facts import parse_version
from ..servers.certificates import ServerTls
from ..servers.pgbouncer import PgBouncerBinary, check_settings
from ..servers.process import cleanup_on_error
from ..servers.watchdog import OWNER_ENV, alive, watchdog
from ..tls import TlsClient
from .base import PostgresHandle, ServerHandle

LABEL_HOST = "org.pytest-pgtopo.host"

_PROBE = r"""
for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null); do
    [ -x "$d/postgres" ] && echo "bindir $d $("$d/postgres" --version 2>&1 | head -n 1)"
done
p="$(command -v postgres 2>/dev/null || true)"
[ -n "$p" ] && echo "bindir $(dirname "$p") $("$p" --version 2>&1 | head -n 1)"
b="$(command -v pgbouncer 2>/dev/null || true)"
[ -z "$b" ] && [ -x /usr/sbin/pgbouncer ] && b=/usr/sbin/pgbouncer
[ -n "$b" ] && echo "pgbouncer $b $("$b" --version 2>&1 | head -n 1)"
id -u postgres >/dev/null 2>&1 && echo "user postgres"
exit 0
"""
_REQUIREMENTS = (
    "an image for the docker backend needs PostgreSQL's server binaries (postgres, initdb, "
    "pg_basebackup in /usr/lib/postgresql/NN/bin or on PATH), pgbouncer (on PATH or "
    "/usr/sbin), a `postgres` OS user and /bin/sh; `pgtopo image build --debian bookworm` "
    "(or trixie) builds one from Debian's packages"
)


class DockerBackend:
    """Servers in containers of `image` (`{major}` in it is replaced by the PostgreSQL major)."""

    def __init__(
        self,
        *,
        image: str = "",
        image_source: str = "default",
        major: int | None = None,
        network: str = "auto",
        network_source: str = "default",
        keep: bool = False,
        requested: str = "docker",
    ) -> None:
        self._image_template = image or DEFAULT_IMAGE
        self._image_source = image_source
        self._major = major
        self._network_wanted = network
        self._network_source = network_source
        self.keep = keep
        self.requested = requested
        self.run_id = secrets.token_hex(4)
        self._started: list[ServerHandle] = []
        self._handles: dict[tuple[str, int], DockerPostgres] = {}
        self._client_dir: Path | None = None
        self._network_name: str | None = None

    # --- what every container shares ------------------------------------------------------------

    @cached_property
    def engine(self) -> Engine:
        return docker_engine.connect()

    @cached_property
    def network_mode(self) -> str:
        try:
            return docker_engine.network_mode(self.engine, self._network_wanted)
        except PgtopoError as exc:
            raise PgtopoError(f"{exc} ({self._network_source})") from None

    @cached_property
    def image(self) -> str:
        """The image name: the template with {major} filled in (the major asked for, else the
        newest of the local images the template matches)."""
        template = self._image_template
        if "{major}" not in template:
            return template
        if self._major is not None:
            return template.replace("{major}", str(self._major))
        pattern = re.compile(re.escape(template).replace(r"\{major\}", r"(\d+)") + "$")
        found: dict[int, str] = {}
        for image in self.engine.client.images.list():
            for tag in image.tags:
                match = pattern.match(tag)
                if match:
                    found[int(match.group(1))] = tag
        if not found:
            raise PgtopoError(
                f"pytest-pgtopo: no image matching {template} ({self._image_source}) is present "
                f"in the Docker engine at {self.engine.host}; build one with "
                f"`pgtopo image build --debian bookworm` (PostgreSQL 15, tagged "
                f"{REPOSITORY}:pg15) or `--debian trixie` (PostgreSQL 17), or name an image "
                "with --pgtopo-docker-image (ini pgtopo_docker_image, env PGTOPO_DOCKER_IMAGE)"
            )
        return found[max(found)]

    @cached_property
    def tools(self) -> ImageTools:
        """What the image carries, found once per image (cached on disk by image id)."""
        image = self._image_object()
        cache = default_cache_dir() / "probes" / f"{image.id.replace(':', '-')}.json"
        try:
            lines = json.loads(cache.read_text())
        except (OSError, ValueError):
            lines = self._probe()
            with contextlib.suppress(OSError):
                cache.parent.mkdir(parents=True, exist_ok=True)
                cache.write_text(json.dumps(lines))
        return self._tools_from(lines)

    def _image_object(self) -> Any:
        import docker.errors

        client = self.engine.client
        try:
            return client.images.get(self.image)
        except docker.errors.ImageNotFound:
            pass
        try:
            client.images.pull(self.image)
            return client.images.get(self.image)
        except Exception as exc:  # noqa: BLE001 - no registry, no such image, no credentials.
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise PgtopoError(
                f"pytest-pgtopo: image {self.image} ({self._image_source}) is not in the Docker "
                f"engine at {self.engine.host}, and pulling it failed: {first}. Build one with "
                f"`pgtopo image build --debian bookworm|trixie [--tag {self.image}]`, "
                f"or docker pull/load it, or name another with --pgtopo-docker-image"
            ) from None

    def _probe(self) -> list[str]:
        name = f"pgtopo-{self.run_id}-probe"
        watchdog().register_docker(self.engine.host, "containers", name)
        try:
            output = self.engine.client.containers.run(
                self.image,
                ["/bin/sh", "-c", _PROBE],
                entrypoint=[],
                name=name,
                network_mode="none",
                user="root",
                labels=self._labels(),
                stdout=True,
                stderr=True,
            )
        except Exception as exc:  # noqa: BLE001 - no /bin/sh, a broken image...
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise PgtopoError(
                f"pytest-pgtopo: image {self.image} cannot run its probe ({first}); {_REQUIREMENTS}"
            ) from None
        finally:
            with contextlib.suppress(Exception):
                self.engine.client.containers.get(name).remove(force=True, v=True)
            watchdog().unregister_docker(self.engine.host, "containers", name)
        return [line for line in output.decode(errors="replace").splitlines() if line.strip()]

    def _tools_from(self, lines: list[str]) -> ImageTools:
        bindirs: dict[int, tuple[str, str]] = {}
        pgbouncer: tuple[str, str] | None = None
        has_user = False
        for line in lines:
            word, _, rest = line.partition(" ")
            if word == "bindir":
                path, _, version_text = rest.partition(" ")
                found = re.search(r"(\d+)(?:\.(\d+))?", version_text)
                if found:
                    bindirs[int(found.group(1))] = (path, found.group(0))
            elif word == "pgbouncer":
                path, _, version_text = rest.partition(" ")
                pgbouncer = (path, version_text)
            elif word == "user":
                has_user = True
        missing = []
        if not bindirs:
            missing.append("PostgreSQL (no postgres in /usr/lib/postgresql/*/bin or on PATH)")
        if not has_user:
            missing.append("a `postgres` OS user")
        if missing:
            raise PgtopoError(
                f"pytest-pgtopo: image {self.image} ({self._image_source}) lacks "
                f"{' and '.join(missing)}; {_REQUIREMENTS}"
            )
        if self._major is not None and self._major not in bindirs:
            raise PgtopoError(
                f"pytest-pgtopo: image {self.image} carries PostgreSQL "
                f"{', '.join(map(str, sorted(bindirs)))}, not {self._major} (asked for by the "
                "PostgreSQL version option); name an image per major with {major} in "
                "--pgtopo-docker-image"
            )
        major = self._major if self._major is not None else max(bindirs)
        bindir, version = bindirs[major]
        bouncer_version = None
        if pgbouncer is not None and re.search(r"PgBouncer \d", pgbouncer[1]):
            bouncer_version = parse_version(pgbouncer[1])
        return ImageTools(bindir, version, pgbouncer[0] if pgbouncer else None, bouncer_version)

    @cached_property
    def placement(self) -> Placement:
        mode = self.network_mode
        self.ryuk = docker_engine.use_ryuk(self.engine)
        """Whether testcontainers' reaper runs too (only where its image is present)."""
        self._sweep_dead_runs()
        if mode == "bridge":
            self._network_name = f"pgtopo-{self.run_id}"
            if not self.keep:
                watchdog().register_docker(self.engine.host, "networks", self._network_name)
            self.engine.client.networks.create(
                self._network_name, driver="bridge", labels=self._labels()
            )
        return Placement(
            self.engine,
            self.image,
            mode,
            self.run_id,
            self._network_name,
            self._labels(),
            self.keep,
        )

    def _labels(self) -> dict[str, str]:
        return {
            LABEL_RUN: self.run_id,
            LABEL_OWNER: os.environ.get(OWNER_ENV, str(os.getpid())),
            LABEL_HOST: socket.gethostname(),
        }

    def _sweep_dead_runs(self) -> None:
        """Remove containers and networks of runs on this machine whose pytest is gone (a
        watchdog that was itself killed); the watchdog normally leaves nothing to sweep."""
        if not self.engine.local:
            return
        host_filter = {"label": [f"{LABEL_HOST}={socket.gethostname()}"]}
        with contextlib.suppress(Exception):
            client = self.engine.client
            for container in client.containers.list(all=True, filters=host_filter):
                owner = container.labels.get(LABEL_OWNER, "")
                if owner.isdigit() and not alive(int(owner)):
                    container.remove(force=True, v=True)
            for network in client.networks.list(filters=host_filter):
                owner = network.attrs.get("Labels", {}).get(LABEL_OWNER, "")
                if owner.isdigit() and not alive(int(owner)):
                    network.remove()

    # --- the Backend protocol ---------------------------------------------------------------------

    def describe(self) -> str:
        """'docker, PostgreSQL 15.18 + PgBouncer 1.18.0 in image ... (Docker ..., host
        networking)', or why it cannot run (the error when a topology starts has the details)."""
        try:
            tools = self.tools
        except PgtopoError as exc:
            first = str(exc).splitlines()[0].removeprefix("pytest-pgtopo: ")
            return f"{self.requested}, {first}"
        bouncer = (
            f" + PgBouncer {'.'.join(map(str, tools.pgbouncer_version))}"
            if tools.pgbouncer_version
            else " (no PgBouncer)"
        )
        try:
            mode = f"{self.network_mode} networking"
        except PgtopoError as exc:
            mode = str(exc).removeprefix("pytest-pgtopo: ")
        return (
            f"{self.requested} (Docker), PostgreSQL {tools.postgres_version}{bouncer} in image "
            f"{self.image} ({self.engine.describe()}, {mode})"
        )

    def unavailable(self, topology: str) -> str | None:
        if topology in ("plain", "bouncer", "tls", "replica"):
            return None
        return (
            f"the {topology} topology is not available on the docker backend (it runs plain, "
            "bouncer, tls and replica); use --pgtopo-backend=local for it"
        )

    def start_postgres(
        self,
        name: str,
        *,
        settings: Mapping[str, str] | None = None,
        hba: str | None = None,
        tls: ServerTls | None = None,
        client_tls: TlsClient | None = None,
    ) -> DockerPostgres:
        server = DockerPostgres(
            self.placement,
            self.tools,
            name,
            settings=settings,
            hba=hba,
            tls=tls,
            client_tls=client_tls,
        )
        with cleanup_on_error() as on_error:
            on_error(server.stop)
            server.start()
        self._remember(server)
        return server

    def start_standby(self, name: str, primary: PostgresHandle, slot: str) -> DockerPostgres:
        source = self._own(primary.endpoint)
        server = DockerPostgres(self.placement, self.tools, name)
        with cleanup_on_error() as on_error:
            on_error(server.stop)
            server.start_standby_of(source, slot)
        self._remember(server)
        return server

    def check_pgbouncer_settings(self, settings: Mapping[str, str]) -> None:
        tools = self.tools
        if tools.pgbouncer is None or tools.pgbouncer_version is None:
            raise PgtopoError(
                f"pytest-pgtopo: image {self.image} ({self._image_source}) has no pgbouncer "
                f"(looked on PATH and in /usr/sbin), which the PgBouncer topologies need; "
                f"{_REQUIREMENTS}"
            )
        binary = PgBouncerBinary(
            Path(tools.pgbouncer), f"image {self.image}", tools.pgbouncer_version
        )
        check_settings(binary, settings)

    def start_pgbouncer(
        self,
        name: str,
        upstream: Endpoint,
        settings: Mapping[str, str],
        *,
        tls: ServerTls | None = None,
        client_tls: TlsClient | None = None,
    ) -> DockerPgBouncer:
        self.check_pgbouncer_settings(settings)
        server = self._own(upstream)
        pgbouncer = DockerPgBouncer(
            self.placement,
            self.tools,
            name,
            upstream,
            server.inner_address,
            settings,
            tls=tls,
            client_tls=client_tls,
        )
        with cleanup_on_error() as on_error:
            on_error(pgbouncer.stop)
            pgbouncer.start()
        self._started.append(pgbouncer)
        return pgbouncer

    def client_files(self, name: str, files: Mapping[str, bytes]) -> dict[str, Path]:
        if self._client_dir is None:
            self._client_dir = Path(tempfile.mkdtemp(prefix=f"pgtopo-{self.run_id}-"))
            if not self.keep:
                watchdog().register_directory(self._client_dir)
        directory, n = self._client_dir / name, 1
        while directory.exists():  # A fresh directory per call: `name-2` if `name` exists.
            n += 1
            directory = self._client_dir / f"{name}-{n}"
        directory.mkdir(mode=0o700)
        written = {}
        for file_name, data in files.items():
            path = directory / file_name
            path.write_bytes(data)
            path.chmod(0o600)  # libpq refuses a client key others can read.
            written[file_name] = path
        return written

    def keep_report(self) -> list[str]:
        names = [
            handle.container.container_name
            for handle in self._started
            if isinstance(handle, DockerPostgres | DockerPgBouncer)
            and handle.container.host_port is not None
        ]
        if not names:
            return []
        lines = [f"containers: {' '.join(names)} (docker logs NAME)"]
        remove = f"docker rm -f {' '.join(names)}"
        if self._network_name:
            remove += f"; docker network rm {self._network_name}"
        if self._client_dir:
            remove += f"; rm -rf {self._client_dir}"
        return [*lines, f"stop them with: {remove}"]

    def close(self) -> None:
        """Remove the run's network and client files (containers are stopped first)."""
        if self.keep:
            return
        if self._client_dir is not None:
            shutil.rmtree(self._client_dir, ignore_errors=True)
            watchdog().unregister_directory(self._client_dir)
            self._client_dir = None
        if self._network_name is not None:
            with contextlib.suppress(Exception):
                self.engine.client.networks.get(self._network_name).remove()
            watchdog().unregister_docker(self.engine.host, "networks", self._network_name)
            self._network_name = None

    # --- helpers -------------------------------------------------------------------------------

    def _remember(self, server: DockerPostgres) -> None:
        self._started.append(server)
        endpoint = server.endpoint
        self._handles[(endpoint.host, endpoint.port)] = server

    def _own(self, endpoint: Endpoint) -> DockerPostgres:
        """This backend's server behind `endpoint` (its containers reach it by another address)."""
        server = self._handles.get((endpoint.host, endpoint.port))
        if server is None:
            raise PgtopoError(
                f"pytest-pgtopo: the docker backend can only put a standby or PgBouncer in front "
                f"of a server it runs itself, not {endpoint.host}:{endpoint.port}"
            )
        return server


def docker_majors(pg_version: str, source: str) -> list[int]:
    """The majors --pgtopo-pg-version names, for the docker backend (NN[,NN...]; not `all`:
    what is installed here says nothing about images)."""
    if not pg_version:
        return []
    parts = [part.strip() for part in pg_version.split(",") if part.strip()]
    if not all(part.isdigit() for part in parts):
        raise ConfigError(
            f"pytest-pgtopo: {source}={pg_version!r}: with the docker backend name the majors "
            "(NN[,NN...]); each runs in the image --pgtopo-docker-image names for it"
        )
    return sorted({int(part) for part in parts})
