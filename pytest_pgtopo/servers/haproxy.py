"""One HAProxy process in front of PostgreSQL nodes, routing by each node's own answer.

As with Patroni, HAProxy does not guess which node is the primary: an agent-check asks a small
health responder beside each node (servers/health.py), which asks the node itself. Two listeners:
`primary` (only the node that says it is primary is up) and `read` (round robin over the nodes
that say they are standbys). When a node goes down its sessions are shut
(`on-marked-down shutdown-sessions`), so clients reconnect instead of hanging on a dead route.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..endpoint import Endpoint
from ..errors import BinaryNotFoundError
from ..runners import local
from ..runners.local import OsUser
from ..types import LOOPBACK
from .process import RunsAProcess, ServerProcess, free_port

WELL_KNOWN = (Path("/usr/sbin/haproxy"), Path("/usr/local/sbin/haproxy"))
INSTALL = (
    "HAProxy was not found (looked on PATH and in /usr/sbin, /usr/local/sbin). Install it with:\n"
    "  Debian/Ubuntu: apt-get install haproxy\n"
    "  macOS:         brew install haproxy"
)
CHECK_INTERVAL_MS = 100
"""How often HAProxy asks each agent: the failover detection delay is about this plus rise/fall."""


@dataclass(frozen=True)
class HaNode:
    """One PostgreSQL node as HAProxy sees it: its address and its health responder's port."""

    name: str
    host: str
    port: int
    agent_port: int


def find_haproxy() -> Path:
    found = shutil.which("haproxy")
    for candidate in [Path(found)] if found else list(WELL_KNOWN):
        if candidate.is_file():
            return candidate
    raise BinaryNotFoundError(INSTALL)


def config_text(
    nodes: Sequence[HaNode], primary_port: int, read_port: int, stats_socket: Path
) -> str:
    """haproxy.cfg: a `primary` and a `read` listener, servers checked by TCP and by agent."""
    check = (
        f"check inter {CHECK_INTERVAL_MS}ms fall 1 rise 1 agent-check agent-inter "
        f"{CHECK_INTERVAL_MS}ms on-marked-down shutdown-sessions"
    )
    lines = [
        "global",
        "    maxconn 512",
        f"    stats socket {stats_socket} mode 600 level admin",
        "defaults",
        "    mode tcp",
        # A refused connect (the node just died) is retried after min(timeout connect, 1 s),
        # on another server (redispatch): these bound what HAProxy adds to the error window.
        "    timeout connect 500ms",
        "    retries 1",
        "    option redispatch",
        "    timeout client 1h",
        "    timeout server 1h",
        "    timeout check 2s",
    ]
    for listener, port, role in (
        ("primary", primary_port, "primary"),
        ("read", read_port, "replica"),
    ):
        lines += [f"listen {listener}", f"    bind {LOOPBACK}:{port}", "    balance roundrobin"]
        lines += [
            f"    server {node.name} {node.host}:{node.port} {check} agent-port "
            f'{node.agent_port} agent-send "{role}\\n"'
            for node in nodes
        ]
    return "\n".join(lines) + "\n"


class HaProxy(RunsAProcess):
    """A running HAProxy in `directory` (haproxy.cfg, haproxy.log, stats socket)."""

    def __init__(self, binary: Path, user: OsUser, directory: Path, *, keep: bool = False) -> None:
        self.binary = binary
        self.directory = directory
        self.conf = directory / "haproxy.cfg"
        self.stats_socket = directory / "stats.sock"
        self.log_path = directory / "haproxy.log"
        self.user = user
        self.runner = ServerProcess(
            "HAProxy",
            user=user,
            cwd=directory,
            log_path=self.log_path,
            conf_path=self.conf,
            port_taken="cannot bind socket",
            # SIGUSR1 waits for sessions to end (never, for an idle pool): SIGTERM stops at once.
            stop_steps=((signal.SIGTERM, 10.0),),
            keep=keep,
        )
        self.primary_port = 0
        self.read_port = 0
        self._endpoint: Endpoint | None = None

    @property
    def label(self) -> str:
        return f"haproxy ({self.log_path})"

    @property
    def endpoint(self) -> Endpoint:
        """The primary listener, as the superuser on `postgres`."""
        if self._endpoint is None:
            raise RuntimeError("HAProxy is not running")
        return self._endpoint

    def start(self, nodes: Sequence[HaNode], superuser: Endpoint) -> None:
        """Start it and return once a login through the primary listener works."""
        self.read_port = free_port()

        def argv_at(port: int) -> list[str]:
            self.conf.write_text(config_text(nodes, port, self.read_port, self.stats_socket))
            local.chown_tree(self.conf, self.user)
            return [str(self.binary), "-f", str(self.conf), "-db"]

        def endpoint_at(port: int) -> Endpoint:
            return Endpoint(LOOPBACK, port, superuser.user, superuser.password, "postgres")

        self.primary_port, admin = self.runner.start(argv_at, endpoint_at)
        admin.close()
        self._endpoint = endpoint_at(self.primary_port)

    def server_states(self) -> dict[tuple[str, str], str]:
        """(listener, node) -> 'UP' / 'DOWN' / ..., from the stats socket's `show stat`."""
        text = self.command("show stat")
        header, *rows = [line for line in text.splitlines() if line.strip()]
        columns = header.lstrip("# ").split(",")
        states = {}
        for row in rows:
            fields = dict(zip(columns, row.split(","), strict=False))
            if fields.get("svname") not in ("FRONTEND", "BACKEND"):
                states[(fields["pxname"], fields["svname"])] = fields.get("status", "")
        return states

    def up(self, listener: str) -> list[str]:
        """The nodes `listener` routes to now."""
        return sorted(
            n for (l_, n), s in self.server_states().items() if l_ == listener and s == "UP"
        )

    def command(self, line: str) -> str:
        """One command on the stats socket (runtime API); its whole answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(self.stats_socket))
            sock.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def stop(self) -> None:
        self.runner.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


def version(binary: Path) -> str:
    """'2.6.12' from `haproxy -v`."""
    out = subprocess.run([str(binary), "-v"], capture_output=True, text=True, timeout=30).stdout
    return out.split()[2] if out.startswith("HAProxy version") else out.strip()
