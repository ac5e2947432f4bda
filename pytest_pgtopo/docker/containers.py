"""One server per container, on testcontainers: create, copy its files in, start, wait for a
real login, read its log, signal it, remove it.

Where it listens depends on the networking the backend chose:
- host: the container shares this machine's network; the server binds 127.0.0.1:PORT (PORT
  picked free here, retried if taken first), and other containers reach it there too.
- bridge: the server binds 0.0.0.0:5432 inside the container, joined to the run's own network
  under its name (how the other containers reach it), and that port is published on
  127.0.0.1:PORT of this machine only (PORT picked free here, so a restart keeps it).

Every container is named before it is created and the name is given to the run's watchdog
first, so a pytest killed at any moment leaves no container behind.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..admin import AdminConnection, wait_until_connectable
from ..endpoint import Endpoint
from ..errors import ServerStartError
from ..servers.process import free_port
from ..servers.watchdog import watchdog
from ..types import LOOPBACK
from ..waiting import wait_until
from .engine import Engine

START_TIMEOUT = 60.0
INNER_PORT = 5432
"""Where a server listens inside its container with bridge networking."""
WORK = "/tmp/pgtopo"
"""The server's directory inside its container (data, config, TLS files), owned by postgres."""
INBOX = "/pgtopo-in"
"""Where its files are copied before it starts (as root); the start script copies them to WORK."""
LABEL_RUN = "org.pytest-pgtopo.run"
LABEL_OWNER = "org.pytest-pgtopo.owner"
_PORT_ATTEMPTS = 5
_PORT_TAKEN = ("could not bind", "Address already in use", "port is already allocated")


@dataclass(frozen=True)
class Placement:
    """Where the backend's containers live: the networking mode, the run's network (bridge),
    and the labels every container carries."""

    engine: Engine
    image: str
    mode: str
    """host or bridge."""
    run_id: str
    network: str | None
    labels: Mapping[str, str]
    keep: bool = False
    """--pgtopo-keep: containers outlive pytest, so the watchdog is not told about them."""


class ServerContainer:
    """A container running one server. `script` is the /bin/sh start script (run as the
    `postgres` OS user); `files` are copied to INBOX/NAME first."""

    def __init__(self, placement: Placement, name: str, what: str) -> None:
        self.placement = placement
        self.name = name
        self.what = what
        self.container_name = f"pgtopo-{placement.run_id}-{name}-{secrets.token_hex(3)}"
        self._testcontainer: Any = None
        self.host_port: int | None = None
        self._last_log = ""

    # --- addresses -----------------------------------------------------------------------------

    @property
    def inner_address(self) -> tuple[str, int]:
        """Where other containers of the run reach this server."""
        assert self.host_port is not None
        if self.placement.mode == "host":
            return LOOPBACK, self.host_port
        return self.name_in_network, INNER_PORT

    @property
    def name_in_network(self) -> str:
        return self.container_name

    def listen(self, port: int) -> tuple[str, int]:
        """The address a server binds inside its container when this machine reaches it on `port`."""
        if self.placement.mode == "host":
            return LOOPBACK, port
        return "0.0.0.0", INNER_PORT

    # --- life cycle ----------------------------------------------------------------------------

    def start(
        self,
        script_at: Callable[[tuple[str, int]], str],
        files_at: Callable[[tuple[str, int]], Mapping[str, bytes]],
        endpoint_at: Callable[[int], Endpoint],
        *,
        port: int | None = None,
        env: Mapping[str, str] | None = None,
    ) -> AdminConnection:
        """Start on `port` (or a free one, retried if taken) and return the first working login."""
        attempts = 1 if port is not None else _PORT_ATTEMPTS
        for attempt in range(attempts):
            chosen = port if port is not None else free_port()
            listen = self.listen(chosen)
            try:
                self._create_and_start(script_at(listen), files_at(listen), chosen, env or {})
                self.host_port = chosen
                return wait_until_connectable(
                    endpoint_at(chosen), timeout=START_TIMEOUT, alive=self.is_running
                )
            except Exception as exc:  # noqa: BLE001 - any failure becomes a ServerStartError.
                log = self.log_tail(30)
                self.remove()
                taken = any(text in log or text in str(exc) for text in _PORT_TAKEN)
                if taken and attempt + 1 < attempts:
                    continue
                raise ServerStartError(
                    f"{self.what} did not start in a container of image {self.placement.image} "
                    f"({self.placement.mode} networking, port {chosen}): {exc}\n"
                    f"--- last lines of its log ---\n{log}"
                ) from None
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _create_and_start(
        self, script: str, files: Mapping[str, bytes], port: int, env: Mapping[str, str]
    ) -> None:
        from testcontainers.core.container import DockerContainer

        placement = self.placement
        kwargs: dict[str, Any] = {
            "user": "postgres",
            "labels": dict(placement.labels),
            "entrypoint": ["/bin/sh", "-c"],
            "working_dir": "/tmp",
        }
        container = DockerContainer(placement.image, name=self.container_name, env=dict(env))
        container.with_command([script])
        if placement.mode == "host":
            kwargs["network_mode"] = "host"
        else:
            assert placement.network is not None
            kwargs["network"] = placement.network
            # Published on this machine's loopback only (with_bind_ports would bind 0.0.0.0).
            ports: dict[str, Any] = container.ports
            ports[f"{INNER_PORT}/tcp"] = (LOOPBACK, port)
        container.with_kwargs(**kwargs)
        for file_name, data in files.items():
            container.with_copy_into_container(data, f"{INBOX}/{file_name}", 0o644)
        # Named and registered before it exists: a SIGKILL from here on leaves nothing.
        if not placement.keep:
            watchdog().register_docker(placement.engine.host, "containers", self.container_name)
        self._testcontainer = container
        container.start()

    @property
    def _container(self) -> Any:
        return None if self._testcontainer is None else self._testcontainer._container

    def _state(self) -> dict[str, Any]:
        container = self._container
        if container is None:
            return {}
        try:
            container.reload()
        except Exception:  # noqa: BLE001 - removed: no state.
            return {}
        return dict(container.attrs.get("State") or {})

    def is_running(self) -> bool:
        return bool(self._state().get("Running"))

    @property
    def pid(self) -> int | None:
        """The server's pid as this machine sees it (the engine runs here), while it runs."""
        state = self._state()
        return int(state["Pid"]) if state.get("Running") and state.get("Pid") else None

    def log_tail(self, lines: int = 20) -> str:
        container = self._container
        if container is None:
            return self._last_log
        with contextlib.suppress(Exception):
            self._last_log = container.logs(tail=lines).decode(errors="replace").rstrip("\n")
        return self._last_log

    def signal(self, sig: str, timeout: float = 30.0) -> None:
        """Send `sig` (SIGINT, SIGQUIT, ...) to the server and wait until it has exited."""
        container = self._container
        if container is None or not self.is_running():
            return
        with contextlib.suppress(Exception):
            container.kill(signal=sig)
        try:
            wait_until(
                lambda: not self.is_running(),
                timeout=timeout,
                explain=lambda: f"{self.what} did not exit {timeout:.0f} s after {sig}",
            )
        except Exception:  # noqa: BLE001 - escalate
            with contextlib.suppress(Exception):
                container.kill(signal="SIGKILL")

    def start_again(self) -> None:
        """Start the stopped container again (same files, same ports)."""
        container = self._container
        assert container is not None
        container.start()

    def remove(self) -> None:
        """Remove the container with its anonymous volumes (stopping it first, by SIGKILL)."""
        if self._testcontainer is None:
            return
        self.log_tail(30)  # Kept for a report after removal.
        with contextlib.suppress(Exception):
            self._testcontainer.get_wrapped_container().remove(force=True, v=True)
        watchdog().unregister_docker(self.placement.engine.host, "containers", self.container_name)
        self._testcontainer = None
