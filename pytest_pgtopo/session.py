"""Everything one pytest process starts, started lazily and released in one place.

No pytest import here: the plugin hands this object its config and calls close() at the end.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .audit import Finding, Target, ports_of
from .backends import Backend, make_backend
from .config import PgtopoConfig
from .databases import Databases
from .endpoint import Endpoint
from .errors import PgtopoAuditError, PgtopoWarning, TopologyUnavailableError
from .servers.process import release_all
from .topologies.base import Topology
from .topologies.bouncer import BouncerOptions, BouncerTopology
from .topologies.plain import PlainTopology
from .topologies.replica import ReplicaTopology
from .topologies.tls import TlsOptions, TlsTopology

TOPOLOGY_STARTERS: dict[str, Callable[[Backend], Topology]] = {
    "plain": PlainTopology.start,
    "bouncer": BouncerTopology.start,
    "tls": TlsTopology.start,
    "replica": ReplicaTopology.start,
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
    _backend: Backend | None = None
    _databases: dict[tuple[int, int], Databases] = field(default_factory=dict)

    @property
    def backend(self) -> Backend:
        """Where this run's servers run; made on first use, so a run that starts nothing
        looks for no binaries."""
        if self._backend is None:
            self._backend = make_backend(self.config)
        return self._backend

    def topology(self, name: str) -> Topology:
        """The running topology `name` (plain, bouncer, tls, replica), started on first use."""
        if name not in self.topologies:
            self.topologies[name] = self._start(name, lambda: TOPOLOGY_STARTERS[name](self.backend))
        return self.topologies[name]

    def custom_bouncer(self, options: BouncerOptions) -> BouncerTopology:
        """A PgBouncer topology with non-default options, one per distinct options value."""
        topology = self._custom(
            "bouncer", options, lambda: BouncerTopology.start(self.backend, options)
        )
        assert isinstance(topology, BouncerTopology)
        return topology

    def custom_tls(self, options: TlsOptions) -> TlsTopology:
        """A TLS topology with non-default options (mTLS, other host names)."""
        topology = self._custom("tls", options, lambda: TlsTopology.start(self.backend, options))
        assert isinstance(topology, TlsTopology)
        return topology

    def _custom(self, kind: str, options: object, start: Callable[[], Topology]) -> Topology:
        key = f"{kind} {options}"
        if key not in self.topologies:
            self.topologies[key] = self._start(kind, start)
        return self.topologies[key]

    def _start(self, kind: str, start: Callable[[], Topology]) -> Topology:
        reason = self.backend.unavailable(kind)
        if reason is not None:
            raise TopologyUnavailableError(reason)
        return start()

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

    def databases(self, topology: Topology) -> Databases:
        """Per-test databases on `topology`'s database server."""
        key = (id(topology), id(topology.database_server))
        if key not in self._databases:
            self._databases[key] = Databases(
                topology.database_server, before_drop=topology.release_database
            )
        return self._databases[key]

    def keep_report(self) -> list[str]:
        """What --pgtopo-keep left behind and a shell line that stops and removes it."""
        lines = [topology.describe() for topology in self.topologies.values()]
        return lines + (self._backend.keep_report() if self._backend is not None else [])

    def close(self) -> None:
        """Drop pending databases, stop every server (unless keep), release the backend.

        Every step runs even when an earlier one fails; all failures are raised together."""
        steps: list[Callable[[], object]] = [d.close for d in self._databases.values()]
        if not self.config.keep:
            steps += [topology.stop for topology in self.topologies.values()]
        if self._backend is not None:
            steps.append(self._backend.close)
        try:
            release_all(steps, "everything this run started")
        finally:
            self._databases.clear()
            if not self.config.keep:
                self.topologies.clear()
