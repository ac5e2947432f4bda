"""Replica benchmark: pg_replica_pair bring-up and failover, next to building a pair by hand.

Run from the repository root:  python bench/replica.py [--repeat N]

Every figure is a median over repetitions measured in this one run, ours and bare interleaved
(in alternating order) so that machine noise hits both alike. It prints a report and always
exits 0.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import sqlalchemy

from pytest_pgtopo import create_engine
from pytest_pgtopo.endpoint import Endpoint
from pytest_pgtopo.runners import local
from pytest_pgtopo.servers.local_backend import LocalBackend
from pytest_pgtopo.servers.postgres import LOOPBACK, free_port
from pytest_pgtopo.topologies.replica import ReplicaTopology

BRING_UP_TARGET = 1.5
POLL_INTERVAL = 0.005
WAIT_LIMIT = 60.0
DRIVER = "psycopg"
ENGINES = ("failover", "stable")
INSERT = sqlalchemy.text("INSERT INTO bench_t (n) VALUES (1)")
RECOVERY = "SELECT pg_is_in_recovery()"

Samples = dict[str, list[float]]


def ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1000


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
        basebackup = ms_since(start)
        (data / "standby.signal").touch()
        local.chown_tree(data / "standby.signal", backend.user)
        port = free_port()
        conninfo = (
            f"host={LOOPBACK} port={source.port} user={source.user} password={source.password}"
        )
        settings = {
            "port": port,
            "listen_addresses": LOOPBACK,
            "unix_socket_directories": data,
            "primary_conninfo": conninfo,
        }
        options = [arg for name, value in settings.items() for arg in ("-c", f"{name}={value}")]
        process = local.spawn(
            [str(backend.binaries["postgres"]), "-D", str(data), *options],
            user=backend.user,
            cwd=area,
            log_path=area / "standby.log",
        )
        while True:
            try:
                conn = psycopg.connect(
                    host=LOOPBACK,
                    port=port,
                    user=source.user,
                    password=source.password,
                    dbname="postgres",
                    autocommit=True,
                )
                in_recovery = conn.execute(RECOVERY).fetchone()
                break
            except psycopg.OperationalError:
                if process.poll() is not None or time.perf_counter() > start + WAIT_LIMIT:
                    raise
                time.sleep(POLL_INTERVAL)
        total = ms_since(start)
        with conn:
            if in_recovery != (True,):
                raise RuntimeError(f"the bare standby is not in recovery: {in_recovery}")
            promote_start = time.perf_counter()
            conn.execute("SELECT pg_promote(wait => false)")
            while conn.execute(RECOVERY).fetchone() != (False,):
                if time.perf_counter() > promote_start + WAIT_LIMIT:
                    raise RuntimeError("the bare standby was not promoted")
                time.sleep(POLL_INTERVAL)
            promotion = ms_since(promote_start)
        return basebackup, total, promotion
    finally:
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)
            process.wait(30)
        shutil.rmtree(data, ignore_errors=True)


def measure_bring_up(backend: LocalBackend, area: Path, repeat: int) -> Samples:
    samples: Samples = {
        k: []
        for k in ("ours", "bare", "primary", "standby", "basebackup", "standby start", "promote")
    }

    def ours() -> None:
        start = time.perf_counter()
        topology = ReplicaTopology.start(backend)
        samples["ours"].append(ms_since(start))
        topology.stop()

    def bare() -> None:
        start = time.perf_counter()
        server = backend.start_postgres("bare-primary")
        primary = ms_since(start)
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
            if time.perf_counter() > start + WAIT_LIMIT:
                raise
            failed += 1
            time.sleep(POLL_INTERVAL)


def failover_once(topology: ReplicaTopology, which: str, samples: Samples) -> None:
    """On a fresh pair: one write through each engine (so both pools hold a connection to the
    old primary), then promote() + stop_primary("immediate") and time the first write that
    succeeds through the engine `which`, from just before promote()."""
    if topology.changed:
        start = time.perf_counter()
        topology.rebuild()
        samples["rebuild"].append(ms_since(start))
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
        samples["promote"].append(ms_since(t0))
        topology.stop_primary("immediate")
        samples["promote + stop"].append(ms_since(t0))
        after_stop = time.perf_counter()
        failed = first_write(engines[which], t0)
        samples[which].append(ms_since(t0))
        samples[f"{which} after stop"].append(ms_since(after_stop))
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


def report(title: str, rows: list[tuple[str, list[float]]]) -> None:
    width = max(len(name) for name, _ in [(title, []), *rows])
    print(f"{title:<{width}}  {'median ms':>9}  {'min ms':>8}  {'max ms':>8}  {'n':>3}")
    for name, values in rows:
        print(
            f"{name:<{width}}  {statistics.median(values):9.1f}  {min(values):8.1f}"
            f"  {max(values):8.1f}  {len(values):>3}"
        )


def ratio(ours: list[float], bare: list[float]) -> float:
    return statistics.median(ours) / statistics.median(bare)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=31, help="rounds per measurement")
    args = parser.parse_args()
    repeat = max(1, args.repeat)

    root = Path(tempfile.mkdtemp(prefix="pgtopo_bench-", dir="/dev/shm"))
    root.chmod(0o755)
    # A private initdb cache, so ~/.cache/pytest-pgtopo is left alone.
    os.environ["PGTOPO_CACHE_DIR"] = str(root / "cache")
    backend = LocalBackend(pg_bindir=None, pg_bindir_source="default", tmp_root=root, keep=False)
    try:
        area = root / "bare"
        area.mkdir()
        local.chown_tree(area, backend.user)
        bring = measure_bring_up(backend, area, repeat)
        fail = measure_failover(backend, repeat)
    finally:
        backend.close()
        shutil.rmtree(root, ignore_errors=True)

    report(
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
    report(
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
    bring_ratio = ratio(bring["ours"], bring["bare"])
    status = "OK" if round(bring_ratio, 2) <= BRING_UP_TARGET else "MISSED"
    print(
        f"RATIO pair bring-up / bare primary + bare standby: {bring_ratio:.2f}x"
        f" (target <= {BRING_UP_TARGET:g}x) {status}"
    )
    print(
        f"RATIO rebuild() / bare primary + bare standby: "
        f"{ratio(fail['rebuild'], bring['bare']):.2f}x (info)"
    )
    print(
        f"RATIO promote() / bare promotion: {ratio(fail['promote'], bring['promote']):.2f}x (info)"
    )
    print(
        f"RATIO first write stable / failover engine: "
        f"{ratio(fail['stable'], fail['failover']):.2f}x (info)"
    )


if __name__ == "__main__":
    main()
