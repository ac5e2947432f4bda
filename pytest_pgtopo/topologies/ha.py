"""`pg_ha`: the replica pair behind a real HAProxy that routes by asking the nodes themselves.

Each node has a health responder (servers/health.py) that answers HAProxy's agent-check with
what the node says of itself (`pg_is_in_recovery()`), as Patroni's REST API does. HAProxy's
`primary` listener leads to whichever node says it is primary; its `read` listener balances over
the nodes that say they are standbys. Nothing here tells HAProxy about a promotion: it notices.

Everything of pg_replica_pair is here too (`.primary`, `.replica`, `.promote()`,
`.stop_primary()`, `.wait_for_replay()`, `.multi_host()`); `.stable` is the HAProxy endpoint.
"""

from __future__ import annotations

import functools

from ..audit import Target
from ..backends.base import Backend, HaBackend, HaProxyHandle, ServerHandle
from ..endpoint import Endpoint
from ..errors import PgtopoError, TopologyUnavailableError
from ..quoting import quote_ident, quote_literal
from ..servers.haproxy import HaNode
from ..servers.health import HealthResponder
from ..servers.process import cleanup_on_error, release_all
from ..waiting import wait_until
from .replica import SLOT, Nodes, ReplicaTopology

# pg_rewind needs hint bits WAL-logged and full-page images, which the fast defaults turn off,
# and the target's WAL back to the checkpoint before the fork: crash recovery's end-of-recovery
# checkpoint would recycle it (pg_rewind: "could not find previous WAL record").
REWINDABLE = {"wal_log_hints": "on", "full_page_writes": "on", "wal_keep_size": "64MB"}
NODE_NAMES = ("pg1", "pg2")
"""HAProxy's names for the nodes first started as primary and as standby."""


class HaTopology(ReplicaTopology):
    fixture = "pg_ha"

    def __init__(self, backend: Backend) -> None:
        if not isinstance(backend, HaBackend):
            raise TopologyUnavailableError("the ha topology needs the local backend")
        self._ha_backend: HaBackend = backend
        super().__init__(backend)
        self.responders: list[HealthResponder] = []
        self.haproxy: HaProxyHandle
        with cleanup_on_error() as on_error:
            on_error(super().stop)
            self._start_haproxy()

    @classmethod
    def start(cls, backend: Backend) -> HaTopology:
        return cls(backend)

    def _start_nodes(self) -> Nodes:
        with cleanup_on_error() as on_error:
            primary = self._backend.start_postgres("ha-primary", settings=REWINDABLE)
            on_error(primary.stop)
            primary.admin.execute(f"SELECT pg_create_physical_replication_slot('{SLOT}')")
            replica = self._ha_backend.start_standby_with("ha-replica", primary, SLOT, REWINDABLE)
        return Nodes(primary, replica)

    def _start_haproxy(self) -> None:
        servers = (self.nodes.primary, self.nodes.replica)
        with cleanup_on_error() as on_error:
            # Each responder looks its node up on every check: rebuild() replaces the nodes.
            self.responders = [
                HealthResponder(functools.partial(self._node_endpoint, i))
                for i in range(len(servers))
            ]
            for responder in self.responders:
                on_error(responder.close)
            nodes = [
                HaNode(name, s.endpoint.host, s.endpoint.port, r.port)
                for name, s, r in zip(NODE_NAMES, servers, self.responders, strict=True)
            ]
            self.haproxy = self._ha_backend.start_haproxy("haproxy", nodes, self.primary)
        self.wait_for_routing()

    def _node_endpoint(self, index: int) -> Endpoint:
        return (self.nodes.primary, self.nodes.replica)[index].endpoint

    # --- endpoints ---------------------------------------------------------------------------

    @property
    def primary_endpoint(self) -> Endpoint:
        """HAProxy's primary listener: always the node that says it is primary."""
        return Endpoint(
            self.primary.host, self.haproxy.primary_port, self.primary.user,
            self.primary.password, "postgres",
        )  # fmt: skip

    @property
    def read_endpoint(self) -> Endpoint:
        """HAProxy's read listener: round robin over the nodes that say they are standbys."""
        return Endpoint(
            self.primary.host, self.haproxy.read_port, self.primary.user,
            self.primary.password, "postgres",
        )  # fmt: skip

    @property
    def stable(self) -> Endpoint:
        """In pg_ha, the one address that follows the primary is HAProxy's."""
        return self.primary_endpoint

    @property
    def client_endpoint(self) -> Endpoint:
        return self.primary_endpoint

    # --- routing -----------------------------------------------------------------------------

    def roles(self) -> dict[str, str | None]:
        """Node name -> 'primary' / 'replica' / None (unreachable), as each node says."""
        return {name: r.role() for name, r in zip(NODE_NAMES, self.responders, strict=True)}

    def routes(self) -> dict[str, list[str]]:
        """Listener -> the nodes HAProxy sends it to now."""
        return {listener: self.haproxy.up(listener) for listener in ("primary", "read")}

    def wait_for_routing(self, timeout: float = 30.0) -> None:
        """Until HAProxy routes exactly as the nodes say: `primary` to the node(s) that say
        primary, `read` to those that say standby."""

        def agreed() -> bool:
            roles = self.roles()
            want = {
                "primary": sorted(n for n, r in roles.items() if r == "primary"),
                "read": sorted(n for n, r in roles.items() if r == "replica"),
            }
            return self.routes() == want

        wait_until(
            agreed,
            timeout=timeout,
            explain=lambda: f"HAProxy routes {self.routes()}, nodes say {self.roles()}",
            first=0.01,
            longest=0.05,
        )

    # --- failovers ---------------------------------------------------------------------------

    def switchover(self, timeout: float = 60.0) -> None:
        """A planned failover: the standby catches up, the primary stops cleanly (a fast
        shutdown sends its last WAL to the standby first), the standby is promoted, and this
        returns once HAProxy routes to it. Pause writers around it to lose nothing."""
        self.wait_for_replay(timeout)
        self.stop_primary("fast")
        self.promote(timeout)
        self.wait_for_routing(timeout)

    def crash_failover(self, timeout: float = 60.0) -> None:
        """The primary crashes (immediate stop), the standby is promoted at once (what Patroni
        does after its TTL), and this returns once HAProxy routes to it."""
        self.stop_primary("immediate")
        self.promote(timeout)
        self.wait_for_routing(timeout)

    def restart_primary(self, mode: str = "fast") -> None:
        """Restart the node that started as primary, on the same port (a minor-version
        upgrade, a config change that needs one); it is still the primary afterwards."""
        self._ha_backend.restart_postgres(self.nodes.primary, mode)

    # --- replication modes -------------------------------------------------------------------

    def set_synchronous(self, standby_names: str | None = "ha-replica") -> None:
        """Synchronous replication (`synchronous_standby_names` + `synchronous_commit=on`): a
        commit returns once the named standby has flushed it. None: asynchronous again.

        A name no connected standby has is refused before anything changes: with it, every
        commit on the primary would wait forever."""
        admin = self.nodes.primary.admin
        if standby_names is not None:
            connected = [r["application_name"] for r in admin.rows(_STANDBYS)]
            if standby_names not in connected:
                raise PgtopoError(
                    f"synchronous_standby_names {standby_names!r} names no connected standby "
                    f"(connected: {', '.join(connected) or 'none'}); every commit would wait "
                    "forever, so nothing was changed"
                )
        self.changed = True  # ALTER SYSTEM outlives the test: the next one gets a fresh pair.
        names = quote_literal(quote_ident(standby_names)) if standby_names else "''"
        admin.execute(f"ALTER SYSTEM SET synchronous_standby_names = {names}")
        admin.execute(f"ALTER SYSTEM SET synchronous_commit = {'on' if standby_names else 'off'}")
        admin.execute("SELECT pg_reload_conf()")
        state = "sync" if standby_names else "async"
        wait_until(
            lambda: [r["sync_state"] for r in admin.rows(_STANDBYS)] == [state],
            timeout=30.0,
            explain=lambda: f"the standby did not become {state}: {admin.rows(_STANDBYS)}",
        )

    def hold_back_replication(self) -> None:
        """Stop the standby receiving WAL (it keeps serving reads): what the primary
        acknowledges from now on exists only there, and is lost if it crashes. Pausing replay
        would not lose anything: promotion replays all WAL received first."""
        self.changed = True
        standby = self.nodes.replica.admin
        standby.execute("ALTER SYSTEM SET primary_conninfo = ''")
        standby.execute("SELECT pg_reload_conf()")
        wait_until(
            lambda: not self.nodes.primary.admin.rows(_STANDBYS),
            timeout=30.0,
            explain=lambda: "the standby kept streaming after its primary_conninfo was cleared",
        )

    # --- rejoin ------------------------------------------------------------------------------

    def rejoin(self, timeout: float = 60.0) -> None:
        """Bring the stopped former primary back as a standby of the promoted node, with
        pg_rewind (no new base backup): afterwards `.replica`'s node is the primary, `.primary`'s
        node streams from it, and HAProxy routes reads to it. Call after promote() and
        stop_primary()."""
        old, new = self.nodes.primary, self.nodes.replica
        if old.is_running():
            raise PgtopoError("rejoin() needs the former primary stopped: call stop_primary()")
        if new.admin.scalar("SELECT pg_is_in_recovery()"):
            raise PgtopoError("rejoin() needs the standby promoted: call promote()")
        exists = new.admin.scalar(
            f"SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{SLOT}'"
        )
        if not exists:
            new.admin.execute(f"SELECT pg_create_physical_replication_slot('{SLOT}')")
        # pg_rewind reads the source's timeline from its control file, which a promotion
        # updates only at its (asynchronous) end-of-recovery checkpoint: force it now.
        new.admin.execute("CHECKPOINT")
        self._ha_backend.rewind_and_follow(old, new, SLOT)
        wait_until(
            lambda: bool(new.admin.rows(_STANDBYS)),
            timeout=timeout,
            explain=lambda: f"the rejoined node did not stream: {old.log_tail(10)}",
        )
        self.wait_for_routing(timeout)

    # --- life cycle --------------------------------------------------------------------------

    def rebuild(self) -> None:
        """A fresh pair and a fresh HAProxy in front of it (HAProxy's ports change)."""
        release_all([self._stop_haproxy], self.fixture)
        super().rebuild()
        self._start_haproxy()

    def _stop_haproxy(self) -> None:
        release_all(
            [self.haproxy.stop, *(r.close for r in self.responders)], f"{self.fixture} HAProxy"
        )
        self.responders = []

    def handles(self) -> list[ServerHandle]:
        return [*super().handles(), self.haproxy]

    def audit_targets(self) -> dict[int, Target]:
        ports = (self.primary.port, self.replica.port, *self._haproxy_ports())
        return {port: Target() for port in ports}

    def _haproxy_ports(self) -> tuple[int, int]:
        return self.haproxy.primary_port, self.haproxy.read_port

    def describe(self) -> str:
        return (
            f"pg_ha primary node: {self.primary.describe()}\n"
            f"pg_ha standby node: {self.replica.describe()}\n"
            f"pg_ha HAProxy primary: {self.primary_endpoint.describe()}\n"
            f"pg_ha HAProxy read: {self.read_endpoint.describe()}"
        )

    def stop(self) -> None:
        release_all([*(r.close for r in self.responders), super().stop], self.fixture)


_STANDBYS = "SELECT application_name, sync_state FROM pg_stat_replication"
