"""The cheatsheet's "common mistakes", checked on real connections.

`audit_engine()` / `audit_async_engine()` check one engine against what sits behind it; the
plugin's `--pgtopo-audit=warn|error` checks every engine that connects to a pgtopo topology
during the run, the application's own engines included, by listening to SQLAlchemy's
`do_connect` (what the driver is asked for) and pool `connect` (what the server then says).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import Pool

from . import dbapi, drivers
from .pgbouncer_facts import TRACKED_STARTUP_PARAMETERS
from .recipes.pooler import PgBouncerPooler, keeps_prepared_statements
from .recipes.settings import application_name_problem

# The plugin's own engines (schema loading) carry this name and are not audited.
INTERNAL_APPLICATION_NAME = "pytest-pgtopo internal"
_CPARAMS = "pgtopo_audit_cparams"


@dataclass(frozen=True)
class Target:
    """What sits behind the address an engine connects to."""

    pooler: str | None = None
    """PgBouncer's pool_mode ("transaction", "session", "statement"), or None for a server."""
    tls: bool = False
    """Whether the server (or pooler) offers TLS, so a client should verify it."""
    pgbouncer: PgBouncerPooler | None = None
    """What that PgBouncer does, when known: one that tracks prepared statements makes them
    safe for the drivers proven through it."""


@dataclass(frozen=True)
class Finding:
    code: str
    message: str
    fix: str

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}. Fix: {self.fix}"


def audit_parameters(
    driver: str,
    cparams: Mapping[str, Any],
    target: Target,
    *,
    sync_in_event_loop: bool = False,
) -> list[Finding]:
    """The findings visible before connecting, from what the driver is asked for."""
    facts = drivers.get(driver).facts(cparams)
    findings: list[Finding] = []
    if sync_in_event_loop:
        findings.append(
            Finding(
                "sync-driver-in-async-code",
                f"sync driver {driver} connected inside a running event loop; every query "
                "blocks the loop",
                "use create_async_engine with asyncpg or psycopg (psycopg2 and pg8000 are sync-only)",
            )
        )
    kept = target.pgbouncer is not None and keeps_prepared_statements(
        target.pgbouncer, drivers.get(driver)
    )
    if target.pooler == "transaction" and facts.prepared_statements and not kept:
        findings.append(
            Finding(
                "prepared-statements-behind-pooler",
                f"{driver} keeps server-side prepared statements behind PgBouncer in transaction "
                "mode; they vanish or collide across server connections",
                "create_engine(..., pooler='transaction') (asyncpg statement_cache_size=0 and "
                "prepared_statement_cache_size=0; psycopg prepare_threshold=None); or, where "
                "PgBouncer 1.21+ tracks them (max_prepared_statements > 0), pooler=<its "
                "PgBouncerPooler> (a topology's .pooler) to keep them",
            )
        )
    refused = sorted(set(facts.startup) - TRACKED_STARTUP_PARAMETERS)
    if target.pooler is not None and refused:
        findings.append(
            Finding(
                "startup-parameter-refused-by-pooler",
                f"startup parameters {', '.join(refused)} are refused by PgBouncer "
                "('unsupported startup parameter'), or silently dropped if ignored",
                "set them with ALTER ROLE/DATABASE ... SET (durable_settings_sql()) or SET LOCAL",
            )
        )
    if target.tls and facts.tls != "verify-full":
        findings.append(
            Finding(
                "tls-not-verified",
                f"{driver} uses TLS mode {facts.tls!r}: the server's certificate "
                f"{'is not checked' if facts.tls != 'verify-ca' else 'is checked, its host name is not'}"
                ", so a man in the middle goes unnoticed",
                "verify-full: Endpoint(tls=TlsClient(ca_path)) or sslmode=verify-full + sslrootcert "
                "(libpq), an SSLContext from ssl.create_default_context(cafile=...) (asyncpg ssl=, "
                "pg8000 ssl_context=)",
            )
        )
    problem = application_name_problem(facts.startup.get("application_name"))
    if problem is not None:
        findings.append(
            Finding(
                "application-name",
                problem,
                "SessionSettings(application_name='<service>') or the driver's application_name",
            )
        )
    return findings


def audit_statement_timeout(statement_timeout: str | None) -> list[Finding]:
    """The server's statement_timeout for a connection, as `SHOW statement_timeout` says."""
    if statement_timeout not in ("0", None):
        return []
    return [
        Finding(
            "no-statement-timeout",
            "statement_timeout is 0: a runaway query holds its connection forever",
            "SessionSettings(statement_timeout=...) or ALTER ROLE ... SET statement_timeout",
        )
    ]


def audit_engine(engine: sqlalchemy.Engine, target: Target | None = None) -> list[Finding]:
    """Open one new connection from `engine` and audit it against `target` (default: a plain
    server without TLS). The engine's pool is disposed first, so the connection is new."""
    recorder = AuditListener(lambda _rec, findings: None, lambda _rec: target or Target())
    engine.dispose()
    recorder.attach(engine)
    try:
        with engine.connect():
            pass
    finally:
        recorder.detach(engine)
    return recorder.last


async def audit_async_engine(engine: AsyncEngine, target: Target | None = None) -> list[Finding]:
    """audit_engine() for an AsyncEngine."""
    recorder = AuditListener(lambda _rec, findings: None, lambda _rec: target or Target())
    await engine.dispose()
    recorder.attach(engine.sync_engine)
    try:
        async with engine.connect():
            pass
    finally:
        recorder.detach(engine.sync_engine)
    return recorder.last


class AuditListener:
    """do_connect keeps the driver's parameters on the connection record; pool connect asks
    the server for statement_timeout and audits. `target_of(cparams)` says what is behind
    (None: not a pgtopo address, skip); `report` receives each connection's findings."""

    def __init__(
        self,
        report: Callable[[Mapping[str, Any], list[Finding]], None],
        target_of: Callable[[Mapping[str, Any]], Target | None],
    ) -> None:
        self._report = report
        self._target_of = target_of
        self.last: list[Finding] = []

    def attach(self, owner: Any) -> None:
        event.listen(owner, "do_connect", self._on_do_connect)
        event.listen(
            owner.pool if isinstance(owner, sqlalchemy.Engine) else Pool,
            "connect",
            self._on_connect,
        )

    def detach(self, owner: Any) -> None:
        event.remove(owner, "do_connect", self._on_do_connect)
        event.remove(
            owner.pool if isinstance(owner, sqlalchemy.Engine) else Pool,
            "connect",
            self._on_connect,
        )

    def _on_do_connect(
        self, dialect: Any, record: Any, cargs: Any, cparams: dict[str, Any]
    ) -> None:
        # Checked before connecting: a pooler refuses some mistakes outright, and its error
        # would hide the finding that names the fix.
        driver = str(dialect.driver)
        if driver not in drivers.DRIVERS:
            return
        target = self._target_of(cparams)
        app_name = drivers.get(driver).facts(cparams).startup.get("application_name")
        if target is None or app_name == INTERNAL_APPLICATION_NAME:
            return
        sync_in_loop = not dialect.is_async and _in_event_loop()
        self.last = audit_parameters(driver, cparams, target, sync_in_event_loop=sync_in_loop)
        record.info[_CPARAMS] = dict(cparams)
        if self.last:
            self._report(cparams, self.last)

    def _on_connect(self, dbapi_connection: Any, record: Any) -> None:
        cparams = record.info.pop(_CPARAMS, None)
        if cparams is None:
            return
        findings = audit_statement_timeout(_server_statement_timeout(dbapi_connection))
        self.last = [*self.last, *findings]
        if findings:
            self._report(cparams, findings)


def _server_statement_timeout(dbapi_connection: Any) -> str | None:
    value = dbapi.scalar(dbapi_connection, "SELECT current_setting('statement_timeout')")
    if not getattr(dbapi_connection, "autocommit", False):
        dbapi_connection.rollback()  # Leave no transaction open behind the application.
    return None if value is None else str(value)


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def ports_of(cparams: Mapping[str, Any]) -> list[int]:
    """Every port a connection may go to (multi-host URLs list several)."""
    raw = cparams.get("port")
    values = raw if isinstance(raw, (list, tuple)) else str(raw or "5432").split(",")
    hosts = cparams.get("host")
    if isinstance(hosts, (list, tuple)):  # asyncpg: host="h:p" items when ports ride with hosts
        values = [*values, *(h.rsplit(":", 1)[1] for h in hosts if ":" in str(h))]
    return [int(v) for v in values if str(v).strip().isdigit()]
