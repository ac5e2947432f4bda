"""A load probe: a steady writer (and optional readers) on any engine while a test breaks things.

Every write inserts one new id and counts as acknowledged only once its COMMIT returned. The
report says what an application would have lived through::

    with LoadProbe(engine) as probe:             # sync Engine: threads
        probe.wait_for_acks(20)
        pg_ha.stop_primary("immediate"); pg_ha.promote()
        probe.wait_recovered()
    report = probe.report()
    assert report.lost == [] and report.error_window is not None

    async with LoadProbe(async_engine) as probe:  # AsyncEngine: tasks on the running loop
        await probe.await_acks(20)
        await asyncio.to_thread(pg_ha.promote)    # keep the loop (and the writer) running
        await probe.await_recovered()
    report = await probe.areport()

- error window: the first failure to the first success after it (seconds);
- outage: the first failure to the first success after the last failure;
- errors by class: the driver's own exception class (and SQLSTATE where it has one);
- longest gap: the longest time between two acknowledged writes (a stall without an error);
- lost: acknowledged ids missing afterwards (read through the engine, retried until it answers).
"""

from __future__ import annotations

from .probe import TABLE, LoadProbe
from .report import Failure, LoadProbeError, ProbeReport, classify

__all__ = ["TABLE", "Failure", "LoadProbe", "LoadProbeError", "ProbeReport", "classify"]
