"""`pg_replica_pair`: a primary and a streaming hot-standby replica, plus a stable endpoint.

The replica is cloned with pg_basebackup and streams through a physical replication slot.
`.stable` is one host:port (an in-process forwarder) that always leads to the current primary,
as HAProxy does in front of Patroni; it follows promote().
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..audit import Target
from ..backends.base import Backend, PostgresHandle, ServerHandle
from ..endpoint import Endpoint, MultiHostEndpoint
from ..servers.process import cleanup_on_error, release_all
from ..servers.proxy import TcpProxy
from ..waiting import wait_until
from .base import Topology

SLOT = "pgtopo_replica"
_POLL_START, _POLL_MAX = 0.002, 0.05


@dataclass(frozen=True)
class Nodes:
    primary: PostgresHandle
    replica: PostgresHandle


class ReplicaTopology(Topology):
    """Primary + replica. `.primary` / `.replica` are the two nodes' endpoints (fixed addresses);
    after promote() the replica's node is the one that accepts writes, and `.stable` follows it."""

    fixture = "pg_replica_pair"

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self.nodes = self._start_nodes()
        self.proxy = TcpProxy(self._address(self.nodes.primary))
        self.changed = False
        """True once promote() or stop_primary() ran: the next test gets a rebuilt pair."""

    @classmethod
    def start(cls, backend: Backend) -> ReplicaTopology:
        return cls(backend)

    def _start_nodes(self) -> Nodes:
        with cleanup_on_error() as on_error:
            primary = self._backend.start_postgres("primary")
            on_error(primary.stop)
            primary.admin.execute(f"SELECT pg_create_physical_replication_slot('{SLOT}')")
            replica = self._backend.start_standby("replica", primary, SLOT)
        return Nodes(primary, replica)

    # --- endpoints ---------------------------------------------------------------------------

    @property
    def replica(self) -> Endpoint:
        return self.nodes.replica.endpoint

    @property
    def stable(self) -> Endpoint:
        """One address that always leads to the current primary (follows promote())."""
        return Endpoint(
            self.proxy.host, self.proxy.port, self.primary.user, self.primary.password, "postgres"
        )

    @property
    def database_server(self) -> PostgresHandle:
        return self.nodes.primary

    def multi_host(
        self, target_session_attrs: str = "read-write", *, replica_first: bool = True
    ) -> MultiHostEndpoint:
        """Both nodes in one endpoint; `.url(driver)` is a URL SQLAlchemy accepts.

        The replica is listed first by default, so landing on the primary proves that
        target_session_attrs did the choosing.
        """
        nodes = (self.replica, self.primary) if replica_first else (self.primary, self.replica)
        return MultiHostEndpoint(nodes, target_session_attrs)

    # --- replication -------------------------------------------------------------------------

    def wait_for_replay(self, timeout: float = 30.0) -> None:
        """Block until the replica has replayed everything the primary has written so far."""
        lsn = self._primary_lsn()
        self._wait(
            f"SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn",
            timeout,
            lambda: (
                f"replica did not replay up to {lsn} in {timeout:.0f} s "
                f"(lag {self.lag()} bytes; replay paused: {self.replay_paused()})"
            ),
        )

    def pause_replay(self) -> None:
        """Stop applying WAL on the replica (it keeps receiving): reads there go stale."""
        self.nodes.replica.admin.execute("SELECT pg_wal_replay_pause()")
        self._wait(
            "SELECT pg_get_wal_replay_pause_state() = 'paused'",
            30.0,
            lambda: "replica replay did not pause",
        )

    def resume_replay(self) -> None:
        self.nodes.replica.admin.execute("SELECT pg_wal_replay_resume()")

    def replay_paused(self) -> bool:
        return bool(self.nodes.replica.admin.scalar("SELECT pg_is_wal_replay_paused()"))

    def lag(self) -> int:
        """Bytes of WAL written on the primary and not yet replayed on the replica."""
        lsn = self._primary_lsn()
        return int(
            self.nodes.replica.admin.scalar(
                f"SELECT pg_wal_lsn_diff('{lsn}', pg_last_wal_replay_lsn())"
            )
        )

    def _primary_lsn(self) -> str:
        # The insert position, not pg_current_wal_lsn(): with synchronous_commit off a commit
        # record can sit in WAL buffers, past the write position, for up to wal_writer_delay.
        return str(self.nodes.primary.admin.scalar("SELECT pg_current_wal_insert_lsn()::text"))

    def _wait(self, sql: str, timeout: float, explain: Callable[[], str]) -> None:
        """Until `sql` is true on the replica."""
        wait_until(
            lambda: bool(self.nodes.replica.admin.scalar(sql)),
            timeout=timeout,
            explain=explain,
            first=_POLL_START,
            longest=_POLL_MAX,
        )

    # --- failover ----------------------------------------------------------------------------

    def promote(self, timeout: float = 60.0) -> None:
        """Promote the replica to primary and point `.stable` at it. The old primary keeps
        running (a split brain, as after a network partition) until stop_primary()."""
        self.changed = True
        # pg_promote(wait => true) rechecks only every 100 ms; polling ourselves is ~10x faster.
        self.nodes.replica.admin.execute("SELECT pg_promote(wait => false)")
        self._wait(
            "SELECT NOT pg_is_in_recovery()",
            timeout,
            lambda: f"replica was not promoted within {timeout:.0f} s",
        )
        self.proxy.retarget(self._address(self.nodes.replica))

    def stop_primary(self, mode: str = "fast") -> None:
        """Stop the original primary (`fast` or `immediate`, i.e. a crash); files are kept."""
        self.changed = True
        self.nodes.primary.stop_process(mode)

    def rebuild(self) -> None:
        """Replace both servers with a fresh pair; `.stable` keeps its port."""
        super().stop()
        self.nodes = self._start_nodes()
        self.proxy.retarget(self._address(self.nodes.primary))
        self.changed = False

    @staticmethod
    def _address(server: PostgresHandle) -> tuple[str, int]:
        return server.endpoint.host, server.endpoint.port

    # --- the Topology protocol ---------------------------------------------------------------

    def handles(self) -> list[ServerHandle]:
        return [self.nodes.primary, self.nodes.replica]

    def audit_targets(self) -> dict[int, Target]:
        return {endpoint.port: Target() for endpoint in (self.primary, self.replica, self.stable)}

    def describe(self) -> str:
        return (
            f"pg_replica_pair primary: {self.primary.describe()}\n"
            f"pg_replica_pair replica: {self.replica.describe()}\n"
            f"pg_replica_pair stable (current primary): {self.stable.describe()}"
        )

    def stop(self) -> None:
        release_all([self.proxy.close, super().stop], self.fixture)
