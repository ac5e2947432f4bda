"""Replica benchmark: pg_replica_pair bring-up and failover, next to building a pair by hand.

Run from the repository root:  python bench/replica.py [--repeat N]

Every figure is a median over repetitions measured in this one run, ours and bare interleaved
(in alternating order) so that machine noise hits both alike. It prints a report and always
exits 0.
"""

from __future__ import annotations

import shutil
import signal
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import sqlalchemy

from pytest_pgtopo import create_engine
from pytest_pgtopo.backends.local import LocalBackend
from pytest_pgtopo.endpoint import Endpoint
from pytest_pgtopo.runners import local
from pytest_pgtopo.servers.process import free_port
from pytest_pgtopo.topologies.replica import ReplicaTopology
from pytest_pgtopo.types import LOOPBACK

# isort: split
# bench/common.py: `python bench/<name>.py` puts bench/ on sys.path, so it imports as `common`.
import common

BRING_UP_TARGET = 1.5
DRIVER = "psycopg"
ENGINES = ("failover", "stable")
INSERT = sqlalchemy.text("INSERT INTO bench_t (n) VALUES (1)")
RECOVERY = "SELECT pg_is_in_recovery()"

Samples = dict[str, list[float]]


# --- bring-up --------------------------------------------------------------------------------


def bare_standby(backend: LocalBackend, source: Endpoint, area: Path) -> tuple[float, float, float]:
    """pg_basebackup from a running primary, standby.signal, postgres with primary_conninfo, a
    psycopg.connect every 5 ms until a read-only query works. Then, timed on its own, a bare
    promotion: pg_promote(wait => false) and a poll every 5 ms until it is out of recovery.
    Returns (basebackup ms, standby total ms, promotion ms)."""
    data = area / "standby"
    process: subprocess.Popen[bytes] | None = None
    start = time.perf_counter()
    try:
        local.run(
            [
                str(backend.binaries["pg_basebackup"]),
                *("-h", LOOPBACK, "-p", str(source.port), "-U", source.user, "-D", str(data)),
                *("-X", "stream", "-c", "fast", "-w", "--no-sync"),
            ],
            user=backend.user,
            cwd=area,
            env={"PGPASSWORD": source.password},
        )
        basebackup = common.ms_since(start)
        (data / "standby.signal").touch()
        local.chown_tree(data / "standby.signal", backend.user)
        port = free_port()
        conninfo = (
            f"host={LOOPBACK} port={source.port} user={source.user} password={source.password}"
        )
        process = common.spawn_postgres(
            backend.binaries["postgres"],
            data,
            port,
            user=backend.user,
            cwd=area,
            log_path=area / "standby.log",
            primary_conninfo=conninfo,
        )
        conn = common.connect_when_up(
            process,
            port=port,
            user=source.user,
            password=source.password,
            deadline=start + common.WAIT_LIMIT,
            autocommit=True,
        )
        with conn:
            in_recovery = conn.execute(RECOVERY).fetchone()
            total = common.ms_since(start)
            if in_recovery != (True,):
                raise RuntimeError(f"the bare standby is not in recovery: {in_recovery}")
            promote_start = time.perf_counter()
            conn.execute("SELECT pg_promote(wait => false)")
            while conn.execute(RECOVERY).fetchone() != (False,):
                if time.perf_counter() > promote_start + common.WAIT_LIMIT:
                    raise RuntimeError("the bare standby was not promoted")
                time.sleep(common.POLL_INTERVAL)
            promotion = common.ms_since(promote_start)
        return basebackup, total, promotion
    finally:
        common.stop_process(process, signal.SIGINT, 30)
        shutil.rmtree(data, ignore_errors=True)


def measure_bring_up(backend: LocalBackend, area: Path, repeat: int) -> Samples:
    samples: Samples = {
        k: []
        for k in ("ours", "bare", "primary", "standby", "basebackup", "standby start", "promote")
    }

    def ours() -> None:
        start = time.perf_counter()
        topology = ReplicaTopology.start(backend)
        samples["ours"].append(common.ms_since(start))
        topology.stop()

    def bare() -> None:
        start = time.perf_counter()
        server = backend.start_postgres("bare-primary")
        primary = common.ms_since(start)
        try:
            basebackup, standby, promotion = bare_standby(backend, server.endpoint, area)
        finally:
            server.stop()
        samples["primary"].append(primary)
        samples["standby"].append(standby)
        samples["basebackup"].append(basebackup)
        samples["standby start"].append(standby - basebackup)
        samples["bare"].append(primary + standby)
        samples["promote"].append(promotion)

    steps: list[Callable[[], None]] = [ours, bare]
    # Round 0 fills the initdb cache and pays first-use costs: it is discarded.
    for round_ in range(repeat + 1):
        for step in steps if round_ % 2 else steps[::-1]:
            step()
        if not round_:
            for values in samples.values():
                values.clear()
    return samples


# --- failover --------------------------------------------------------------------------------


def write(engine: sqlalchemy.Engine) -> None:
    with engine.begin() as conn:
        conn.execute(INSERT)


def first_write(engine: sqlalchemy.Engine, start: float) -> int:
    """Retry INSERT + commit every 5 ms until one succeeds; returns the failed attempts."""
    failed = 0
    while True:
        try:
            write(engine)
            return failed
        except sqlalchemy.exc.DBAPIError:
            if time.perf_counter() > start + common.WAIT_LIMIT:
                raise
            failed += 1
            time.sleep(common.POLL_INTERVAL)


def failover_once(topology: ReplicaTopology, which: str, samples: Samples) -> None:
    """On a fresh pair: one write through each engine (so both pools hold a connection to the
    old primary), then promote() + stop_primary("immediate") and time the first write that
    succeeds through the engine `which`, from just before promote()."""
    if topology.changed:
        start = time.perf_counter()
        topology.rebuild()
        samples["rebuild"].append(common.ms_since(start))
    topology.nodes.primary.admin.execute("CREATE TABLE bench_t (id bigserial PRIMARY KEY, n int)")
    topology.wait_for_replay()
    engines = {
        "failover": create_engine(topology.multi_host(), DRIVER),
        "stable": create_engine(topology.stable, DRIVER),
    }
    try:
        for engine in engines.values():
            write(engine)
        t0 = time.perf_counter()
        topology.promote()
        samples["promote"].append(common.ms_since(t0))
        topology.stop_primary("immediate")
        samples["promote + stop"].append(common.ms_since(t0))
        after_stop = time.perf_counter()
        failed = first_write(engines[which], t0)
        samples[which].append(common.ms_since(t0))
        samples[f"{which} after stop"].append(common.ms_since(after_stop))
        samples[f"{which} failed"].append(failed)
    finally:
        for engine in engines.values():
            engine.dispose()


def measure_failover(backend: LocalBackend, repeat: int) -> Samples:
    keys = ["rebuild", "promote", "promote + stop"]
    keys += [f"{which}{suffix}" for which in ENGINES for suffix in ("", " after stop", " failed")]
    samples: Samples = {key: [] for key in keys}
    topology = ReplicaTopology.start(backend)
    try:
        # Round 0 pays first-use costs (SQLAlchemy's dialect setup, ...): it is discarded.
        for round_ in range(repeat + 1):
            for which in ENGINES if round_ % 2 else ENGINES[::-1]:
                failover_once(topology, which, samples)
            if not round_:
                for values in samples.values():
                    values.clear()
    finally:
        topology.stop()
    return samples


# --- report ----------------------------------------------------------------------------------


def main() -> None:
    parser = common.arg_parser(__doc__, repeat=31, repeat_help="rounds per measurement")
    repeat = parser.parse_args().repeat

    with common.scratch_dir() as root, common.cache_dir(root / "cache"):
        backend = common.local_backend(root)
        try:
            area = root / "bare"
            area.mkdir()
            local.chown_tree(area, backend.user)
            bring = measure_bring_up(backend, area, repeat)
            fail = measure_failover(backend, repeat)
        finally:
            backend.close()

    common.report(
        "pair bring-up",
        [
            ("ReplicaTopology.start (warm cache)", bring["ours"]),
            ("bare pair: primary + standby", bring["bare"]),
            ("  backend.start_postgres() (primary)", bring["primary"]),
            ("  bare standby: basebackup + start", bring["standby"]),
            ("    pg_basebackup", bring["basebackup"]),
            ("    standby.signal + postgres + poll", bring["standby start"]),
            ("topology.rebuild() (between failovers)", fail["rebuild"]),
        ],
    )
    print()
    print("failover, from t0 = just before promote(); each engine timed in its own round")
    common.report(
        "failover",
        [
            ("promote()", fail["promote"]),
            ("bare pg_promote(wait => false) + poll 5 ms", bring["promote"]),
            ('promote() + stop_primary("immediate")', fail["promote + stop"]),
            ("first write, failover engine (multi-host)", fail["failover"]),
            ("  of which after stop_primary returned", fail["failover after stop"]),
            ("first write, stable engine (.stable)", fail["stable"]),
            ("  of which after stop_primary returned", fail["stable after stop"]),
        ],
    )
    for which in ENGINES:
        failed = fail[f"{which} failed"]
        print(
            f"{which} engine: failed INSERT attempts before the first success: "
            f"median {statistics.median(failed):g}, max {max(failed):g}"
        )
    print()
    pair = common.median_ratio(bring["ours"], bring["bare"])
    rebuild = common.median_ratio(fail["rebuild"], bring["bare"])
    promote = common.median_ratio(fail["promote"], bring["promote"])
    stable_write = common.median_ratio(fail["stable"], fail["failover"])
    print(
        common.verdict("pair bring-up / bare primary + bare standby", pair, "<=", BRING_UP_TARGET)
    )
    print(common.info("rebuild() / bare primary + bare standby", rebuild))
    print(common.info("promote() / bare promotion", promote))
    print(common.info("first write stable / failover engine", stable_write))


if __name__ == "__main__":
    main()
