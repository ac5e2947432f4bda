"""What a load probe reports: each failure, the error window, the writes lost."""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

import sqlalchemy as sa

from ..errors import PgtopoError


class LoadProbeError(PgtopoError):
    """The probe could not start (its engine cannot reach a server) or could not check."""


@dataclass(frozen=True)
class Failure:
    at: float
    """Seconds since the probe started."""
    error: str
    """The driver's own exception class, `module.QualName` (SQLAlchemy's wrapper unwrapped)."""
    sqlstate: str | None
    message: str


@dataclass
class ProbeReport:
    acknowledged: int
    failures: list[Failure]
    lost: list[int]
    """Acknowledged ids not in the table afterwards."""
    error_window: float | None
    """First failure to the first success after it; None if nothing failed."""
    outage: float | None
    """First failure to the first success after the last failure."""
    longest_gap: float = 0.0
    """The longest time between two acknowledged writes: a stall (a connect HAProxy holds while
    it retries, a paused writer) shows here even when nothing failed."""
    reads: int = 0
    read_failures: list[Failure] = field(default_factory=list)

    @property
    def errors_by_class(self) -> dict[str, int]:
        counts = collections.Counter(
            f"{f.error} ({f.sqlstate})" if f.sqlstate else f.error for f in self.failures
        )
        return dict(counts.most_common())

    def describe(self) -> str:
        window = "none" if self.error_window is None else f"{self.error_window * 1000:.0f} ms"
        outage = "none" if self.outage is None else f"{self.outage * 1000:.0f} ms"
        return (
            f"{self.acknowledged} writes acknowledged, {len(self.lost)} lost, "
            f"{len(self.failures)} failed (error window {window}, outage {outage}, longest gap "
            f"between acknowledgements {self.longest_gap * 1000:.0f} ms); "
            f"errors: {self.errors_by_class or 'none'}; reads {self.reads} ok, "
            f"{len(self.read_failures)} failed"
        )


def classify(exc: BaseException) -> tuple[str, str | None]:
    """(the driver's exception class as `module.QualName`, its SQLSTATE if it has one)."""
    own: BaseException = exc
    if isinstance(exc, sa.exc.DBAPIError) and exc.orig is not None:
        own = exc.orig
        if own.__cause__ is not None:  # SQLAlchemy's asyncpg adapter wraps asyncpg's error.
            own = own.__cause__
    sqlstate = (
        getattr(own, "sqlstate", None)
        or getattr(own, "pgcode", None)
        or getattr(getattr(own, "diag", None), "sqlstate", None)
    )
    if sqlstate is None and own.args and isinstance(own.args[0], dict):  # pg8000
        sqlstate = own.args[0].get("C")
    return f"{type(own).__module__}.{type(own).__qualname__}", sqlstate


def _window(
    failures: list[Failure], acked: list[tuple[int, float]], *, first: bool
) -> float | None:
    if not failures:
        return None
    start = failures[0].at
    after = failures[0].at if first else failures[-1].at
    success = next((at for _, at in acked if at >= after), None)
    return None if success is None else success - start
