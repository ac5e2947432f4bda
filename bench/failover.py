"""Failover benchmark: error window and acknowledged writes lost, per driver, path and scenario.

Run from the repository root:  python bench/failover.py [--repeat N] [--drivers a,b]

A real pg_ha (primary + streaming standby behind HAProxy, agent-check routing) is started in a
scratch directory. For each driver and path (HAProxy's primary endpoint, the multi-host URL with
target_session_attrs=read-write, the node's own address) and each scenario, a LoadProbe writes
one row every 10 ms while the scenario runs, then reports the error window (first failure to the
first success after it) and the acknowledged writes missing afterwards. Scenarios:

- switchover: writes paused, standby caught up, primary stopped cleanly, standby promoted;
- crash: primary stopped with SIGQUIT (immediate), standby promoted at once; async replication;
- crash, sync: the same with synchronous_standby_names + synchronous_commit=on;
- crash, held back: async, the standby stops receiving WAL, 20 more writes, then the crash;
- restart: the primary restarted (fast) on the same port; no failover.

The direct path only runs `restart` (a node's own address cannot follow a failover). It prints a
markdown table (the README's) and exits 0; with --repeat N each cell is the median window and the
largest loss over N runs. The longest gap shows stalls without errors (HAProxy holding a
connect while it retries; the paused writer of a switchover).
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from pytest_pgtopo import (
    Endpoint,
    HaTopology,
    LoadProbe,
    MultiHostEndpoint,
    ProbeReport,
    create_async_engine,
    create_engine,
    drivers,
)
from pytest_pgtopo.backends.local import LocalBackend
from pytest_pgtopo.servers.haproxy import find_haproxy, version

# isort: split
import common

SCENARIOS = ("switchover", "crash", "crash, sync", "crash, held back", "restart")
PATHS = ("HAProxy", "multi-host", "direct")
KIND = {"asyncpg": "async", "psycopg": "sync", "psycopg2": "sync", "pg8000": "sync"}


@dataclass
class Cell:
    windows: list[float | None]
    gaps: list[float]
    lost: list[int]

    def render(self) -> str:
        """'error window / longest gap between acknowledged writes / acknowledged writes lost'."""
        seen = [w for w in self.windows if w is not None]
        window = "-" if not seen else f"{statistics.median(seen) * 1000:.0f}"
        gap = f"{statistics.median(self.gaps) * 1000:.0f}"
        return f"{window} / {gap} / {max(self.lost)}"


def run_scenario(ha: HaTopology, scenario: str, probe: LoadProbe) -> Callable[[], None]:
    """What the scenario does to the pair, run while the probe writes."""

    def act() -> None:
        if scenario == "switchover":
            probe.pause()
            ha.switchover()
            probe.resume()
        elif scenario == "restart":
            ha.restart_primary()
        elif scenario == "crash, held back":
            ha.wait_for_replay()
            ha.hold_back_replication()
            probe.wait_for_acks(20)
            ha.crash_failover()
        else:
            ha.wait_for_replay()
            ha.crash_failover()

    return act


def endpoint_for(ha: HaTopology, path: str, dbname: str) -> Endpoint | MultiHostEndpoint:
    if path == "HAProxy":
        return ha.primary_endpoint.with_dbname(dbname)
    if path == "multi-host":
        return ha.multi_host().with_dbname(dbname)
    return ha.primary.with_dbname(dbname)


def measure(ha: HaTopology, driver: str, path: str, scenario: str, n: int) -> ProbeReport:
    if ha.changed:
        ha.rebuild()
    dbname = f"bench_{n}"
    ha.nodes.primary.admin.execute(f"CREATE DATABASE {dbname}")
    ha.wait_for_replay()
    if scenario == "crash, sync":
        ha.set_synchronous("ha-replica")
    endpoint = endpoint_for(ha, path, dbname)
    if KIND[driver] == "sync":
        engine = create_engine(endpoint, driver)
        try:
            with LoadProbe(engine) as probe:
                probe.wait_for_acks(30)
                run_scenario(ha, scenario, probe)()
                probe.wait_recovered(10)
            return probe.report()
        finally:
            engine.dispose()
    return asyncio.run(measure_async(ha, create_async_engine(endpoint, driver), scenario))


async def measure_async(ha: HaTopology, engine: AsyncEngine, scenario: str) -> ProbeReport:
    try:
        async with LoadProbe(engine) as probe:
            await probe.await_acks(30)
            if scenario == "switchover":
                await probe.apause()
            await asyncio.to_thread(run_scenario(ha, scenario, probe))
            await probe.await_recovered(10)
        return await probe.areport()
    finally:
        await engine.dispose()


def main() -> None:
    parser = common.arg_parser(__doc__, repeat=1, repeat_help="runs per cell (default 1)")
    parser.add_argument("--drivers", default="asyncpg,psycopg,psycopg2,pg8000")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every report")
    args = parser.parse_args()
    # The pool logs each dead connection it fails to close politely: expected here, and noise.
    logging.getLogger("sqlalchemy.pool").setLevel(logging.CRITICAL)
    chosen = [d for d in args.drivers.split(",") if drivers.get(d).is_installed()]
    cells: dict[tuple[str, str, str], Cell] = {}
    started = time.monotonic()
    with common.scratch_dir() as root:
        backend = LocalBackend(tmp_root=root)
        ha = HaTopology.start(backend)
        n = 0
        try:
            for driver in chosen:
                for path in PATHS:
                    if path == "multi-host" and not drivers.get(driver).multi_host:
                        continue
                    for scenario in SCENARIOS:
                        if path == "direct" and scenario != "restart":
                            continue
                        for _ in range(args.repeat):
                            n += 1
                            report = measure(ha, driver, path, scenario, n)
                            if args.verbose:
                                print(f"{driver} {path} {scenario}: {report.describe()}")
                            cell = cells.setdefault((driver, path, scenario), Cell([], [], []))
                            cell.windows.append(report.error_window)
                            cell.gaps.append(report.longest_gap)
                            cell.lost.append(len(report.lost))
        finally:
            ha.stop()
            backend.close()
    print_table(chosen, cells, time.monotonic() - started)


def print_table(chosen: list[str], cells: dict[tuple[str, str, str], Cell], seconds: float) -> None:
    print(
        f"<!-- python bench/failover.py: {backend_line()}; "
        f"{len(cells)} cells in {seconds:.0f} s -->"
    )
    print("Each cell: error window ms (- = no error) / longest gap between acknowledged writes ms")
    print("/ acknowledged writes lost. One write every 10 ms.")
    print()
    print("| driver | path | " + " | ".join(SCENARIOS) + " |")
    print("|---|---|" + "---|" * len(SCENARIOS))
    for driver in chosen:
        for path in PATHS:
            row = [cells.get((driver, path, s)) for s in SCENARIOS]
            if not any(row):
                continue
            rendered = [cell.render() if cell else "n/a" for cell in row]
            print(f"| {driver} ({KIND[driver]}) | {path} | " + " | ".join(rendered) + " |")


def backend_line() -> str:
    backend = LocalBackend()
    return f"{backend.binaries.describe()}, HAProxy {version(find_haproxy())}"


if __name__ == "__main__":
    sys.exit(main())
