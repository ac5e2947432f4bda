"""The Docker engine the docker backend talks to: reachable or not (and how to fix that),
which networking works there, and whether testcontainers' reaper (Ryuk) can run.

testcontainers (the `docker` extra) is imported only here and in containers.py, and only when
the docker backend is used: a run on the local backend never imports it.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any

from ..errors import PgtopoError

NETWORK_MODES = ("auto", "host", "bridge")

INSTALL_EXTRA = "pip install 'pytest-pgtopo[docker]'"
HOW_TO_START = (
    "start Docker (Docker Desktop, `sudo systemctl start docker`, or as root: dockerd "
    "--iptables=false --bridge=none --storage-driver=vfs -H unix:///tmp/docker.sock & "
    "and export DOCKER_HOST=unix:///tmp/docker.sock; the project's .ci/docker-up does that), "
    "or point DOCKER_HOST at a running engine"
)


class DockerUnavailableError(PgtopoError):
    """No Docker engine is reachable, or the docker extra is not installed."""


def testcontainers_installed() -> bool:
    try:
        import docker  # noqa: F401
        import testcontainers.core.container  # noqa: F401
    except ImportError:
        return False
    return True


def docker_host() -> str:
    """The engine's address as DOCKER_HOST spells it (unix:///var/run/docker.sock by default)."""
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


@dataclass(frozen=True)
class Engine:
    client: Any
    """A docker.DockerClient."""
    host: str
    """DOCKER_HOST, for the watchdog (which talks to the engine API without docker-py)."""
    version: str
    has_bridge: bool
    """Whether the default bridge network exists (published ports work there)."""
    local: bool
    """The engine runs on this machine (a unix socket): host networking reaches it."""

    def describe(self) -> str:
        return f"Docker {self.version} at {self.host}"


def unreachable_reason() -> str | None:
    """None when an engine answers; else why not, and what to do about it."""
    if not testcontainers_installed():
        return f"the docker backend needs testcontainers: {INSTALL_EXTRA}"
    try:
        connect()
    except DockerUnavailableError as exc:
        return str(exc)
    return None


@functools.cache
def connect() -> Engine:
    """The engine at DOCKER_HOST (or the default socket), pinged once per process."""
    if not testcontainers_installed():
        raise DockerUnavailableError(
            f"pytest-pgtopo: the docker backend needs testcontainers: {INSTALL_EXTRA}"
        )
    import docker

    host = docker_host()
    try:
        client = docker.from_env(timeout=60)
        client.ping()
        version = str(client.version().get("Version", "?"))
        has_bridge = bool(client.networks.list(names=["bridge"]))
    except Exception as exc:  # noqa: BLE001 - docker-py raises several kinds for "not there".
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DockerUnavailableError(
            f"pytest-pgtopo: no Docker engine is reachable at {host} ({first}); {HOW_TO_START}"
        ) from None
    return Engine(client, host, version, has_bridge, host.startswith("unix://"))


def network_mode(engine: Engine, wanted: str) -> str:
    """host or bridge: `wanted` unless it is auto. Auto takes bridge networking with ports
    published on 127.0.0.1 where the engine has a bridge (Docker Desktop, a normal Linux
    install, hosted CI), and host networking where it has none (dockerd --bridge=none, where
    publishing is silently ignored) and runs on this machine."""
    if wanted != "auto":
        if wanted == "host" and not engine.local:
            raise PgtopoError(
                f"pytest-pgtopo: host networking needs the Docker engine on this machine, and "
                f"DOCKER_HOST is {engine.host}; use --pgtopo-docker-network=bridge"
            )
        return wanted
    if engine.has_bridge:
        return "bridge"
    if engine.local:
        return "host"
    raise PgtopoError(
        f"pytest-pgtopo: the Docker engine at {engine.host} has no bridge network and is not on "
        "this machine: neither published ports nor host networking can reach its containers"
    )


def use_ryuk(engine: Engine) -> bool:
    """Whether testcontainers' reaper may run: not where the user disabled it, and not where
    its image is missing (it would be pulled, and a machine without a registry would fail).
    Our own watchdog removes every container either way."""
    from testcontainers.core.config import testcontainers_config

    if testcontainers_config.ryuk_disabled:
        return False
    try:
        engine.client.images.get(testcontainers_config.ryuk_image)
    except Exception:  # noqa: BLE001 - not present (or not inspectable): do without it.
        testcontainers_config.ryuk_disabled = True
        return False
    return True
