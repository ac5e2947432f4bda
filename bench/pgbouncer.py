"""PgBouncer benchmark: pg_bouncer bring-up and throughput through PgBouncer, next to bare/direct.

Run from the repository root:  python bench/pgbouncer.py [--repeat N] [--rounds N] [--seconds S]

Every figure is a median over repetitions measured in this one run, ours and bare (or through
PgBouncer and direct) interleaved so that machine noise hits both alike. It prints a report and
always exits 0.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import os
import signal
import statistics
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy
from sqlalchemy.ext.asyncio import AsyncEngine

from pytest_pgtopo import (
    ClientOptions,
    SessionSettings,
    create_async_engine,
    create_engine,
    drivers,
)
from pytest_pgtopo.admin import AdminConnection
from pytest_pgtopo.backends.local import LocalBackend
from pytest_pgtopo.endpoint import Endpoint
from pytest_pgtopo.recipes.engines import DEFAULT_CLIENT
from pytest_pgtopo.recipes.pooler import Pooler, durable_settings_sql
from pytest_pgtopo.runners import local
from pytest_pgtopo.servers.process import free_port
from pytest_pgtopo.topologies.bouncer import BouncerOptions, BouncerTopology
from pytest_pgtopo.types import LOOPBACK

# isort: split
# bench/common.py: `python bench/<name>.py` puts bench/ on sys.path, so it imports as `common`.
import common

RESTART_TARGET = 1.5
THROUGHPUT_TARGET = 0.9
WORKERS = 10
WARMUP_SECONDS = 0.3
DB = "bench"
DRIVERS = ("asyncpg", "psycopg", "psycopg2", "pg8000")
# The only drivers with a server-side prepared-statement cache, which the pooler recipe turns off.
CACHING_DRIVERS = ("asyncpg", "psycopg")
NO_CACHE = "direct, no stmt cache"
CLK_TCK = os.sysconf("SC_CLK_TCK")
CPUS = os.cpu_count() or 1
CPU_NAMES = ("client", "pgbouncer", "postgres")

INSERT = sqlalchemy.text("INSERT INTO bench_t (worker, n) VALUES (:w, :n)")
COUNT = sqlalchemy.text("SELECT count(*) FROM bench_t WHERE worker = :w")
BARE_INI = """\
[databases]
* = host={host} port={server_port}

[pgbouncer]
listen_addr = {host}
listen_port = {port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {auth_file}
pool_mode = transaction
"""


def pid(process: subprocess.Popen[bytes] | None) -> int:
    assert process is not None
    return process.pid


# --- bring-up --------------------------------------------------------------------------------


def bare_pgbouncer(binary: Path, user: local.OsUser, area: Path, server: Endpoint) -> float:
    """Write a minimal ini, spawn pgbouncer, poll every 5 ms until a login through it succeeds."""
    process: subprocess.Popen[bytes] | None = None
    start = time.perf_counter()
    try:
        port = free_port()
        auth_file = area / "userlist.txt"
        auth_file.write_text(f'"{server.user}" "{server.password}"\n')
        ini = area / "pgbouncer.ini"
        ini.write_text(
            BARE_INI.format(host=LOOPBACK, server_port=server.port, port=port, auth_file=auth_file)
        )
        local.chown_tree(area, user)
        process = local.spawn(
            [str(binary), str(ini)], user=user, cwd=area, log_path=area / "pgbouncer.log"
        )
        return common.ms_until_login(
            process, start, port=port, user=server.user, password=server.password
        )
    finally:
        common.stop_process(process, signal.SIGTERM, 10)


def measure_bring_up(backend: LocalBackend, area: Path, repeat: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {"up": [], "restart": [], "bare": []}
    # Round 0 fills the initdb cache and pays first-use costs: it is discarded.
    for round_ in range(repeat + 1):
        start = time.perf_counter()
        topology = BouncerTopology.start(backend)
        up = common.ms_since(start)
        try:
            binary, server = topology.pgbouncer.binary.path, topology.primary
            if round_ % 2:
                restart = common.timed(topology.restart_bouncer)
                bare = bare_pgbouncer(binary, backend.user, area, server)
            else:
                bare = bare_pgbouncer(binary, backend.user, area, server)
                restart = common.timed(topology.restart_bouncer)
        finally:
            topology.stop()
        if round_:
            samples["up"].append(up)
            samples["restart"].append(restart)
            samples["bare"].append(bare)
    return samples


# --- throughput ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Budget:
    seconds: float
    transactions: int | None = None
    """Per worker; when set, each worker runs exactly this many instead of `seconds`."""

    def done(self, n: int, deadline: float) -> bool:
        if self.transactions is not None:
            return n >= self.transactions
        return time.perf_counter() >= deadline


@dataclass(frozen=True)
class Target:
    label: str
    endpoint: Endpoint
    pooler: Pooler | None
    admin: AdminConnection
    """On the benchmark database of the server the target ends up on (for TRUNCATE)."""
    server_pid: int
    bouncer_pid: int | None
    client: ClientOptions = DEFAULT_CLIENT


@dataclass(frozen=True)
class Sample:
    tps: float
    cpu: dict[str, float]
    """Percent of one core used during the sample: client, pgbouncer, postgres."""
    cpu_per_tx: float
    """Microseconds of CPU (all three together) per transaction."""


def sync_worker(engine: sqlalchemy.Engine, w: int, budget: Budget, deadline: float) -> int:
    n = 0
    while not budget.done(n, deadline):
        with engine.begin() as conn:
            conn.execute(INSERT, {"w": w, "n": n})
            conn.execute(COUNT, {"w": w}).scalar_one()
        n += 1
    return n


def sync_run(engine: sqlalchemy.Engine, budget: Budget) -> tuple[int, float]:
    start = time.perf_counter()
    deadline = start + budget.seconds
    with ThreadPoolExecutor(WORKERS) as pool:
        counts = pool.map(lambda w: sync_worker(engine, w, budget, deadline), range(WORKERS))
        total = sum(counts)
    return total, time.perf_counter() - start


async def async_worker(engine: AsyncEngine, w: int, budget: Budget, deadline: float) -> int:
    n = 0
    while not budget.done(n, deadline):
        async with engine.begin() as conn:
            await conn.execute(INSERT, {"w": w, "n": n})
            (await conn.execute(COUNT, {"w": w})).scalar_one()
        n += 1
    return n


async def async_run(engine: AsyncEngine, budget: Budget) -> tuple[int, float]:
    start = time.perf_counter()
    deadline = start + budget.seconds
    workers = (async_worker(engine, w, budget, deadline) for w in range(WORKERS))
    total = sum(await asyncio.gather(*workers))
    return total, time.perf_counter() - start


def run_engine(
    runner: asyncio.Runner, engine: sqlalchemy.Engine | AsyncEngine, budget: Budget
) -> tuple[int, float]:
    if isinstance(engine, AsyncEngine):
        return runner.run(async_run(engine, budget))
    return sync_run(engine, budget)


def tree_cpu(root: int | None) -> float:
    """CPU seconds used so far by process `root` and its live children (a postmaster and its
    backends, which each call setsid(); or PgBouncer, one process)."""
    if root is None:
        return 0.0
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(stat.parent.name) == root or int(fields[1]) == root:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / CLK_TCK


def measure_once(run: Callable[[], tuple[int, float]], target: Target) -> Sample:
    def snapshot() -> tuple[float, float, float]:
        return (
            time.process_time(),
            tree_cpu(target.bouncer_pid),
            tree_cpu(target.server_pid),
        )

    target.admin.execute("TRUNCATE bench_t")
    before = snapshot()
    count, wall = run()
    used = [after - earlier for after, earlier in zip(snapshot(), before, strict=True)]
    cpu = {name: 100 * value / wall for name, value in zip(CPU_NAMES, used, strict=True)}
    return Sample(count / wall, cpu, 1e6 * sum(used) / max(count, 1))


def measure_driver(
    driver: str, targets: list[Target], rounds: int, budget: Budget
) -> dict[str, list[Sample]]:
    """Interleave the targets round by round (rotating their order) on one engine each."""
    factory = create_async_engine if driver == "asyncpg" else create_engine
    samples: dict[str, list[Sample]] = {target.label: [] for target in targets}
    with asyncio.Runner() as runner:
        engines: dict[str, sqlalchemy.Engine | AsyncEngine] = {}
        try:
            for target in targets:
                engines[target.label] = factory(
                    target.endpoint,
                    driver,
                    pooler=target.pooler,
                    client=target.client,
                    pool_size=WORKERS,
                    max_overflow=0,
                )
            # Round 0 is a short warm-up: it fills the engine pools and PgBouncer's server pools.
            for round_ in range(rounds + 1):
                order = targets[round_ % len(targets) :] + targets[: round_ % len(targets)]
                for target in order:
                    this = budget if round_ else Budget(WARMUP_SECONDS)
                    run = functools.partial(run_engine, runner, engines[target.label], this)
                    sample = measure_once(run, target)
                    if round_:
                        samples[target.label].append(sample)
        finally:
            for engine in engines.values():
                if isinstance(engine, AsyncEngine):
                    runner.run(engine.dispose())
                else:
                    engine.dispose()
    return samples


def prepare(topology: BouncerTopology) -> AdminConnection:
    """Create the benchmark database and table; make the session settings durable on it."""
    topology.server.admin.execute(f"CREATE DATABASE {DB}")
    for sql in durable_settings_sql(SessionSettings(), database=DB):
        topology.server.admin.execute(sql)
    admin = AdminConnection(topology.primary.with_dbname(DB))
    admin.execute("CREATE TABLE bench_t (id bigserial PRIMARY KEY, worker int, n int)")
    admin.execute("CREATE INDEX ON bench_t (worker)")
    return admin


def measure_throughput(
    backend: LocalBackend, rounds: int, budget: Budget
) -> tuple[str, dict[str, dict[str, list[Sample]]]]:
    """Per driver and target, throughput samples; the engines through PgBouncer use the
    version-aware recipe (the topology's .pooler). Also returns what that PgBouncer does."""
    pool4 = BouncerTopology.start(backend)
    topologies = [pool4]
    admins: list[AdminConnection] = []
    try:
        pool10 = BouncerTopology.start(backend, BouncerOptions(default_pool_size=10))
        topologies.append(pool10)
        admin4, admin10 = prepare(pool4), prepare(pool10)
        admins += [admin4, admin10]
        server4, server10 = pid(pool4.server.process), pid(pool10.server.process)
        bouncer4, bouncer10 = pid(pool4.pgbouncer.process), pid(pool10.pgbouncer.process)
        targets = [
            Target("direct", pool10.primary.with_dbname(DB), None, admin10, server10, None),
            Target(
                "PgBouncer pool 10",
                pool10.bouncer.with_dbname(DB),
                pool10.pooler,
                admin10,
                server10,
                bouncer10,
            ),
            Target(
                "PgBouncer pool 4",
                pool4.bouncer.with_dbname(DB),
                pool4.pooler,
                admin4,
                server4,
                bouncer4,
            ),
        ]
        # Where a driver has a statement cache, direct without it separates the cost of
        # turning it off (which the pooler recipe does) from the cost of the extra hop.
        no_cache = dataclasses.replace(DEFAULT_CLIENT, prepared_statements=False)
        targets.append(dataclasses.replace(targets[0], label=NO_CACHE, client=no_cache))
        results = {}
        for driver in DRIVERS:
            if drivers.get(driver).is_installed():
                mine = [t for t in targets if t.label != NO_CACHE or driver in CACHING_DRIVERS]
                results[driver] = measure_driver(driver, mine, rounds, budget)
        return pool10.pooler.describe(), results
    finally:
        for admin in admins:
            admin.close()
        for topology in topologies:
            topology.stop()


# --- report ----------------------------------------------------------------------------------


def report_throughput(results: dict[str, dict[str, list[Sample]]]) -> None:
    cpu_head = "  ".join(f"{name:>9}" for name in CPU_NAMES)
    print(f"{'throughput':<30}  {'tx/s':>7}  {'min':>7}  {'max':>7}  {cpu_head}  {'cpu us/tx':>9}")
    for driver, by_target in results.items():
        for label, samples in by_target.items():
            tps = [s.tps for s in samples]
            cpu = "  ".join(
                f"{statistics.median(s.cpu[name] for s in samples):9.0f}" for name in CPU_NAMES
            )
            per_tx = statistics.median(s.cpu_per_tx for s in samples)
            print(
                f"{driver + ' ' + label:<30}  {statistics.median(tps):7.0f}  {min(tps):7.0f}"
                f"  {max(tps):7.0f}  {cpu}  {per_tx:9.0f}"
            )


def throughput_ratio(
    by_target: dict[str, list[Sample]], label: str, baseline: str = "direct"
) -> float:
    def tps(key: str) -> list[float]:
        return [s.tps for s in by_target[key]]

    return common.median_ratio(tps(label), tps(baseline))


def main() -> None:
    parser = common.arg_parser(__doc__, repeat=15, repeat_help="bring-up repetitions")
    parser.add_argument(
        "--rounds", type=common.at_least_one, default=3, help="throughput rounds per driver"
    )
    parser.add_argument("--seconds", type=float, default=2.0, help="length of a throughput run")
    parser.add_argument(
        "--transactions", type=int, help="run this many transactions per worker, not --seconds"
    )
    parser.add_argument(
        "--pgbouncer",
        type=Path,
        action="append",
        help="a pgbouncer binary to measure (repeat for several versions); default: the one found",
    )
    args = parser.parse_args()
    repeat, rounds = args.repeat, args.rounds
    budget = Budget(args.seconds, args.transactions)

    binaries: list[Path | None] = list(args.pgbouncer or [None])
    with common.scratch_dir() as root, common.cache_dir(root / "cache"):
        by_version: dict[str, dict[str, dict[str, list[Sample]]]] = {}
        for index, binary in enumerate(binaries):
            backend = common.local_backend(root, binary)
            try:
                if index == 0:
                    area = root / "bare"
                    area.mkdir()
                    bring = measure_bring_up(backend, area, repeat)
                version, results = measure_throughput(backend, rounds, budget)
                by_version[version] = results
            finally:
                backend.close()

    common.report(
        "bring-up",
        [
            ("BouncerTopology.start (warm cache)", bring["up"]),
            ("topology.restart_bouncer()", bring["restart"]),
            ("bare pgbouncer spawn + poll", bring["bare"]),
        ],
    )
    print()
    workload = (
        f"{budget.transactions} tx per worker"
        if budget.transactions is not None
        else f"{budget.seconds:g} s"
    )
    print(f"{WORKERS} workers, pool_size={WORKERS}, INSERT + SELECT count(*) per tx, {workload}")
    print(f"client/pgbouncer/postgres: % of one core used (this machine has {CPUS} cores)")
    for version, throughput in by_version.items():
        print(f"-- {version} (engines through it: create_engine(..., pooler=topology.pooler))")
        report_throughput(throughput)
    print()
    restart = common.median_ratio(bring["restart"], bring["bare"])
    print(common.verdict("restart_bouncer / bare pgbouncer spawn", restart, "<=", RESTART_TARGET))
    for version, throughput in by_version.items():
        short = version.split(",")[0]
        for driver, by_target in throughput.items():
            ratio = throughput_ratio(by_target, "PgBouncer pool 10")
            label = f"{driver} through {short} / direct"
            verdict = common.verdict(label, ratio, ">=", THROUGHPUT_TARGET)
            print(f"{verdict}  [default_pool_size=10; {version}]")
        for driver, by_target in throughput.items():
            ratio = throughput_ratio(by_target, "PgBouncer pool 4")
            print(f"INFO {driver} through {short} / direct: {ratio:.2f}x  [default_pool_size=4]")
        for driver, by_target in throughput.items():
            if NO_CACHE in by_target:
                ratio = throughput_ratio(by_target, "PgBouncer pool 10", NO_CACHE)
                print(
                    f"INFO {driver} through {short} / direct without statement cache: "
                    f"{ratio:.2f}x  [default_pool_size=10; the cost of the hop alone]"
                )


if __name__ == "__main__":
    main()
