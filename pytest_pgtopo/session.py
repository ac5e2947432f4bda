"""Everything one pytest process starts, started lazily and released in one place.

No pytest import here: the plugin hands this object its config and calls close() at the end.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .audit import Finding, Target, ports_of
from .backends import Backend, auto_picks_docker, make_backend
from .backends.docker import DockerBackend, docker_majors
from .config import PgtopoConfig
from .databases import Databases
from .docker.engine import unreachable_reason
from .endpoint import Endpoint
from .errors import (
    ConfigError,
    PgtopoAuditError,
    PgtopoError,
    PgtopoWarning,
    TopologyUnavailableError,
)
from .schema_cache import SchemaCache
from .servers.binaries import PgBinaries, find_all_pg_binaries, select_versions
from .servers.process import release_all
from .servers.wheel_binaries import default_cache_root
from .topologies.base import Topology
from .topologies.bouncer import BouncerOptions, BouncerTopology
from .topologies.ha import HaTopology
from .topologies.plain import PlainTopology
from .topologies.replica import ReplicaTopology
from .topologies.tls import TlsOptions, TlsTopology

TOPOLOGY_STARTERS: dict[str, Callable[[Backend], Topology]] = {
    "plain": PlainTopology.start,
    "bouncer": BouncerTopology.start,
    "tls": TlsTopology.start,
    "replica": ReplicaTopology.start,
    "ha": HaTopology.start,
}


def spare_core() -> bool:
    """Whether this process can count on a core nobody else in the run uses: a serial run on
    a multi-core machine, or fewer xdist workers than cores. Measured on 2 cores
    (bench/vs_pytest_postgresql.py): cloning ahead saves serial runs wall time, but with
    `-n 2` it costs ~1.1 s of CPU per 200 tests that the other worker needed."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    return workers < (os.cpu_count() or 1)


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
    _backends: dict[int | None, Backend] = field(default_factory=dict)
    _builds: list[PgBinaries] | None = None
    _databases: dict[tuple[int, int], Databases] = field(default_factory=dict)
    _client_builds: dict[int, PgBinaries] | None = None
    _docker_default_major: int | None = None
    _auto_docker: bool = False
    """--pgtopo-backend=auto found no PostgreSQL here and a Docker engine: servers run there."""

    # --- servers: one build and one backend per selected PostgreSQL major --------------------

    def server_builds(self) -> list[PgBinaries]:
        """The PostgreSQL builds this run's topologies use, ascending by major: those
        --pgtopo-pg-version selects, else one (the newest of --pgtopo-pg-bindir if given, else
        the newest found). Empty for the external backend. Raises ConfigError for a version
        that is not installed, BinaryNotFoundError when nothing is."""
        if self._builds is None:
            on_docker = self.config.backend in ("external", "docker")
            self._builds = [] if on_docker else self._select_builds()
        return self._builds

    def _select_builds(self) -> list[PgBinaries]:
        option = self.config.source_of("pg_bindir")
        try:
            found = find_all_pg_binaries(self.config.pg_bindir, option)
        except PgtopoError:
            if self.config.backend == "auto" and auto_picks_docker():
                self._auto_docker = True  # Nothing installed here; auto runs them in Docker.
                return []
            raise
        if not found and self.config.backend == "auto" and auto_picks_docker():
            self._auto_docker = True
            return []
        if self.config.pg_bindir and not self.config.pg_version:
            # A bindir named by the user is the one meant, even with a newer one installed.
            found = {major: b for major, b in found.items() if b.source == option} or found
        try:
            return select_versions(
                found, self.config.pg_version, self.config.source_of("pg_version")
            )
        except ValueError as exc:
            raise ConfigError(f"pytest-pgtopo: {exc}") from None

    def pg_majors(self) -> list[int]:
        if self.config.backend == "docker" or self._on_auto_docker():
            return self._docker_majors()
        return [build.major for build in self.server_builds()]

    def _on_auto_docker(self) -> bool:
        if self.config.backend != "auto":
            return False
        with contextlib.suppress(PgtopoError):
            self.server_builds()
        return self._auto_docker

    def _docker_majors(self) -> list[int]:
        """On docker the majors are images: those --pgtopo-pg-version names, else the one of
        the default image (the newest pytest-pgtopo:pgNN), found on first use."""
        named = docker_majors(self.config.pg_version, self.config.source_of("pg_version"))
        if named:
            return named
        if self._docker_default_major is None:
            default = make_backend(self.config)
            assert isinstance(default, DockerBackend)
            self._docker_default_major = default.tools.major
            self._backends.setdefault(self._docker_default_major, default)
        return [self._docker_default_major]

    def check_docker(self) -> None:
        """--pgtopo-backend=docker with no engine reachable is a usage error at start-up,
        saying how to start one or point DOCKER_HOST at one."""
        if self.config.backend == "docker":
            reason = unreachable_reason()
            if reason is not None:
                raise ConfigError(
                    f"pytest-pgtopo: {self.config.source_of('backend')}=docker: "
                    + reason.removeprefix("pytest-pgtopo: ")
                )
            # A malformed version list: a usage error, now.
            docker_majors(self.config.pg_version, self.config.source_of("pg_version"))

    def backend_for(self, major: int | None = None) -> Backend:
        """The backend running servers of PostgreSQL `major` (None: the run's only or first
        one); made on first use, so a run that starts nothing looks for no binaries."""
        builds = {build.major: build for build in self.server_builds()}
        if major is None and builds:
            major = next(iter(builds))
        if major is None and (self.config.backend == "docker" or self._auto_docker):
            major = self.pg_majors()[0]
        if major not in self._backends:
            self._backends[major] = make_backend(
                self.config, builds.get(major) if major else None, major=major
            )
        return self._backends[major]

    def describe_backends(self) -> str:
        """For the report header: each backend in use and its server build."""
        try:
            majors: list[int | None] = [*self.pg_majors()]
        except PgtopoError:
            return make_backend(self.config).describe()  # Says what is missing and where it looked.
        return "; ".join(self.backend_for(major).describe() for major in majors or [None])

    @property
    def backend(self) -> Backend:
        """The backend of the run's first (or only) PostgreSQL version."""
        return self.backend_for(None)

    # --- topologies ---------------------------------------------------------------------------

    def topology(self, name: str, major: int | None = None) -> Topology:
        """The running topology `name` (plain, bouncer, tls, replica) on PostgreSQL `major`,
        started on first use."""
        return self._get(name, major, "", lambda b: TOPOLOGY_STARTERS[name](b))

    def custom_bouncer(self, options: BouncerOptions, major: int | None = None) -> BouncerTopology:
        """A PgBouncer topology with non-default options, one per distinct options value."""
        topology = self._get(
            "bouncer", major, str(options), lambda b: BouncerTopology.start(b, options)
        )
        assert isinstance(topology, BouncerTopology)
        return topology

    def custom_tls(self, options: TlsOptions, major: int | None = None) -> TlsTopology:
        """A TLS topology with non-default options (mTLS, other host names)."""
        topology = self._get("tls", major, str(options), lambda b: TlsTopology.start(b, options))
        assert isinstance(topology, TlsTopology)
        return topology

    def _get(
        self, kind: str, major: int | None, options: str, start: Callable[[Backend], Topology]
    ) -> Topology:
        majors = self.pg_majors()
        if major is None and majors:
            major = majors[0]
        key = " ".join(part for part in (kind, options, f"pg{major}" if major else "") if part)
        if key not in self.topologies:
            backend = self.backend_for(major)
            reason = backend.unavailable(kind)
            if reason is not None:
                raise TopologyUnavailableError(reason)
            self.topologies[key] = start(backend)
        return self.topologies[key]

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

    def restore_replica_pairs(self) -> None:
        """Rebuild each replica pair a test promoted or stopped a server of, so the next test
        that asks for one gets a primary and a streaming replica again."""
        for pair in self._forget_changed_pairs():
            pair.rebuild()

    def _forget_changed_pairs(self) -> list[ReplicaTopology]:
        """Replica pairs (pg_ha too) a test changed, their per-test databases let go of: the
        node they live on may be stopped, promoted or a standby now (pg_ha's rejoin())."""
        changed = []
        for pair in self.topologies.values():
            if not isinstance(pair, ReplicaTopology) or not pair.changed:
                continue
            stale = self._databases.pop((id(pair), id(pair.database_server)), None)
            if stale is not None:
                with contextlib.suppress(Exception):  # Its server may be stopped or promoted.
                    stale.close()
            changed.append(pair)
        return changed

    def databases(self, topology: Topology) -> Databases:
        """Per-test databases on `topology`'s database server."""
        key = (id(topology), id(topology.database_server))
        if key not in self._databases:
            self._databases[key] = Databases(
                topology.database_server,
                before_drop=topology.release_database,
                schema_cache=self.schema_cache(),
                clone_ahead=spare_core(),
            )
        return self._databases[key]

    def schema_cache(self) -> SchemaCache | None:
        """Loaded schemas kept across workers and runs; None with --pgtopo-schema-cache=off."""
        if not self.config.schema_cache:
            return None
        root = self.config.schema_cache_dir or default_cache_root() / "schemas"
        return SchemaCache(root, self._client_tools)

    def _client_tools(self, major: int) -> PgBinaries | None:
        """pg_dump and pg_restore for a server of `major`: the run's own build of that major,
        else the oldest installed one at least as new (an external server); None if none."""
        for build in self.server_builds():
            if build.major == major:
                return build
        if self._client_builds is None:
            try:
                self._client_builds = find_all_pg_binaries()
            except PgtopoError:
                self._client_builds = {}
        newer = [build for m, build in self._client_builds.items() if m >= major]
        return newer[0] if newer else None

    def keep_report(self) -> list[str]:
        """What --pgtopo-keep left behind and a shell line that stops and removes it."""
        lines = [topology.describe() for topology in self.topologies.values()]
        return lines + [line for b in self._backends.values() for line in b.keep_report()]

    def close(self) -> None:
        """Drop pending databases, stop every server (unless keep), release the backend.

        Every step runs even when an earlier one fails; all failures are raised together."""
        self._forget_changed_pairs()
        steps: list[Callable[[], object]] = [d.close for d in self._databases.values()]
        if not self.config.keep:
            steps += [topology.stop for topology in self.topologies.values()]
        steps += [backend.close for backend in self._backends.values()]
        try:
            release_all(steps, "everything this run started")
        finally:
            self._databases.clear()
            if not self.config.keep:
                self.topologies.clear()
