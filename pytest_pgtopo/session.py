"""Everything one pytest process starts, started lazily and stopped in one place.

No pytest import here: the plugin hands this object its config and calls close() at the end.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .audit import Finding, Target, ports_of
from .config import PgtopoConfig
from .endpoint import Endpoint
from .errors import PgtopoAuditError, PgtopoWarning, TopologyUnavailableError
from .isolation import Databases
from .servers.local_backend import LocalBackend
from .topologies.base import Topology
from .topologies.bouncer import BouncerOptions, BouncerTopology
from .topologies.external import ExternalTopology
from .topologies.plain import PlainTopology
from .topologies.replica import ReplicaTopology
from .topologies.tls import TlsOptions, TlsTopology
from .workspace import default_root

TOPOLOGY_STARTERS: dict[str, Callable[[LocalBackend, PgtopoConfig], Topology]] = {
    "plain": lambda backend, config: PlainTopology.start(backend),
    "bouncer": lambda backend, config: BouncerTopology.start(
        backend, pgbouncer_bin=config.pgbouncer_bin
    ),
    "tls": lambda backend, config: TlsTopology.start(backend),
    "replica": lambda backend, config: ReplicaTopology.start(backend),
}


@dataclass
class KeptDatabase:
    test: str
    endpoint: Endpoint


@dataclass
class PgtopoSession:
    config: PgtopoConfig
    topologies: dict[str, Topology] = field(default_factory=dict)
    kept_databases: list[KeptDatabase] = field(default_factory=list)
    audit_findings: list[tuple[str, Finding]] = field(default_factory=list)
    audit_seen: set[tuple[str, str]] = field(default_factory=set)
    _backend: LocalBackend | None = None
    _databases: dict[tuple[int, int], Databases] = field(default_factory=dict)

    @property
    def backend(self) -> LocalBackend:
        if self._backend is None:
            if self.config.backend == "external":
                raise TopologyUnavailableError(
                    "--pgtopo-backend=external starts no servers; this needs the local backend"
                )
            self._backend = LocalBackend(
                pg_bindir=self.config.pg_bindir,
                pg_bindir_source=self.config.source_of("pg_bindir"),
                tmp_root=self.config.tmpdir or default_root(),
                keep=self.config.keep,
            )
        return self._backend

    def topology(self, name: str) -> Topology:
        """The running topology `name`, started on first use."""
        if name not in self.topologies:
            self.topologies[name] = self._start(name)
        return self.topologies[name]

    def _start(self, name: str) -> Topology:
        if self.config.backend != "external":
            return TOPOLOGY_STARTERS[name](self.backend, self.config)
        if name != "plain":
            raise TopologyUnavailableError(
                f"the {name} topology needs servers pytest-pgtopo starts itself; "
                "--pgtopo-backend=external provides pg_plain only"
            )
        assert self.config.external_url is not None
        return ExternalTopology(self.config.external_url)

    def custom_bouncer(self, options: BouncerOptions) -> BouncerTopology:
        """A PgBouncer topology with non-default options, one per distinct options value."""
        topology = self._custom(
            f"bouncer {options}",
            lambda: BouncerTopology.start(
                self.backend, options, pgbouncer_bin=self.config.pgbouncer_bin
            ),
        )
        assert isinstance(topology, BouncerTopology)
        return topology

    def custom_tls(self, options: TlsOptions) -> TlsTopology:
        """A TLS topology with non-default options (mTLS, other host names)."""
        topology = self._custom(f"tls {options}", lambda: TlsTopology.start(self.backend, options))
        assert isinstance(topology, TlsTopology)
        return topology

    def audit_target(self, cparams: Mapping[str, Any]) -> Target | None:
        """What is behind the address a connection goes to, if it is one of ours."""
        targets = {
            port: target
            for topology in self.topologies.values()
            for port, target in topology.audit_targets().items()
        }
        return next((targets[p] for p in ports_of(cparams) if p in targets), None)

    def audit_report(self, cparams: Mapping[str, Any], findings: list[Finding]) -> None:
        """--pgtopo-audit: warn or fail once per finding and address."""
        where = f"{cparams.get('host')}:{cparams.get('port')}"
        new = [f for f in findings if (f.code, where) not in self.audit_seen]
        self.audit_seen.update((f.code, where) for f in new)
        self.audit_findings.extend((where, f) for f in new)
        if self.config.audit == "error":  # Every offending connection fails, not only the first.
            raise PgtopoAuditError(f"pgtopo audit ({where}): " + "; ".join(map(str, findings)))
        for finding in new:
            warnings.warn(PgtopoWarning(f"pgtopo audit ({where}): {finding}"), stacklevel=2)

    def restore_replica_pair(self) -> None:
        """Rebuild the replica pair if a test promoted or stopped one of its servers, so the
        next test that asks for it gets a primary and a streaming replica again."""
        pair = self.topologies.get("replica")
        if not isinstance(pair, ReplicaTopology) or not pair.changed:
            return
        stale = self._databases.pop((id(pair), id(pair.database_server)), None)
        if stale is not None:
            with contextlib.suppress(Exception):  # Its server may be stopped or promoted.
                stale.close()
        pair.rebuild()

    def _custom(self, name: str, start: Callable[[], Topology]) -> Topology:
        if name not in self.topologies:
            self.topologies[name] = start()
        return self.topologies[name]

    def databases(self, topology: Topology) -> Databases:
        """Per-test databases on `topology`'s database server."""
        key = (id(topology), id(topology.database_server))
        if key not in self._databases:
            # Behind a pooler, its idle server connections must go before a database can drop.
            release = topology.kill if isinstance(topology, BouncerTopology) else None
            self._databases[key] = Databases(topology.database_server, before_drop=release)
        return self._databases[key]

    def keep_report(self) -> list[str]:
        """What --pgtopo-keep left behind and a shell line that stops and removes it."""
        lines = [topology.describe() for topology in self.topologies.values()]
        workspace = self._backend.workspace_path if self._backend is not None else None
        pids = [str(pid) for topology in self.topologies.values() for pid in topology.pids()]
        if workspace is not None and pids:
            lines.append(f"data, sockets and logs: {workspace}")
            waits = " ".join(pids)
            lines.append(
                f"stop them with: kill -INT {waits}; "
                f"while kill -0 {waits} 2>/dev/null; do sleep 0.1; done; rm -rf {workspace}"
            )
        return lines

    def close(self) -> None:
        """Drop pending databases, stop every server, remove the workspace (unless keep)."""
        errors: list[BaseException] = []
        for databases in self._databases.values():
            try:
                databases.close()
            except Exception as exc:  # noqa: BLE001 - keep stopping servers; re-raised below.
                errors.append(exc)
        self._databases.clear()
        if not self.config.keep:
            for topology in self.topologies.values():
                topology.stop()
            self.topologies.clear()
        if self._backend is not None:
            self._backend.close()
        if errors:
            raise errors[0]
