"""Foundation benchmark: pg_plain bring-up and per-test databases, next to doing it by hand.

Run from the repository root:  python bench/foundation.py [--repeat N] [--cold N]

Every figure is a median over repetitions measured in this one run, ours and bare interleaved
so that machine noise hits both alike. It prints a report and always exits 0.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

import psycopg
import sqlalchemy

from pytest_pgtopo import create_engine
from pytest_pgtopo.backends.local import LocalBackend
from pytest_pgtopo.databases import Databases
from pytest_pgtopo.runners import local
from pytest_pgtopo.runners.host import default_root
from pytest_pgtopo.servers.initdb_cache import SUPERUSER, CachedCluster
from pytest_pgtopo.servers.process import free_port
from pytest_pgtopo.topologies.plain import PlainTopology

# isort: split
# bench/common.py: `python bench/<name>.py` puts bench/ on sys.path, so it imports as `common`.
import common

BRING_UP_TARGET = 2.0
PER_TEST_TARGET = 1.5
BARE_TEMPLATE = "bench_template"

Samples = dict[str, list[float]]


def bring_up() -> tuple[float, LocalBackend, PlainTopology]:
    """Time LocalBackend() + PlainTopology.start(); the caller stops what it returns."""
    tmp_root = default_root()
    start = time.perf_counter()
    backend = common.local_backend(tmp_root)
    try:
        topology = PlainTopology.start(backend)
    except BaseException:
        backend.close()
        raise
    return common.ms_since(start), backend, topology


def shut_down(backend: LocalBackend, topology: PlainTopology) -> None:
    topology.stop()
    backend.close()


def bare_start(cluster: CachedCluster, postgres: str, user: local.OsUser, area: Path) -> float:
    """cp -a the cached cluster, launch postgres on it, poll until a login succeeds."""
    data = area / "data"
    process: subprocess.Popen[bytes] | None = None
    start = time.perf_counter()
    try:
        port = free_port()
        subprocess.run(["cp", "-a", str(cluster.data_dir), str(data)], check=True)
        process = common.spawn_postgres(
            postgres, data, port, user=user, cwd=area, log_path=area / "bare.log"
        )
        return common.ms_until_login(
            process, start, port=port, user=SUPERUSER, password=cluster.password
        )
    finally:
        common.stop_process(process, signal.SIGINT, 30)
        shutil.rmtree(data, ignore_errors=True)


def measure_bring_up(root: Path, repeat: int, cold: int) -> Samples:
    samples: Samples = {"cold": [], "warm": [], "bare": []}
    for i in range(cold):
        with common.cache_dir(root / f"cache-cold-{i}"):
            elapsed, backend, topology = bring_up()
            shut_down(backend, topology)
        samples["cold"].append(elapsed)

    area = root / "bare"
    area.mkdir()
    user = local.server_user()
    local.chown_tree(root, user)
    with common.cache_dir(root / "cache-cold-0"):
        for _ in range(repeat):
            elapsed, backend, topology = bring_up()
            cluster, postgres = backend.cluster, backend.binaries["postgres"]
            shut_down(backend, topology)
            samples["warm"].append(elapsed)
            samples["bare"].append(bare_start(cluster, postgres, user, area))
    return samples


def measure_per_test(topology: PlainTopology, repeat: int) -> Samples:
    samples: Samples = {"ours": [], "bare": [], "ours+engine": [], "bare+connect": []}
    endpoint = topology.primary
    dbs = Databases(topology.server)
    bare = psycopg.connect(**endpoint.dbapi_kwargs("psycopg"), autocommit=True)

    def settle() -> None:
        """Wait out pending background drops, as a test body would, so none overlaps a sample."""
        query = (
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'pgtopo\\_%' AND NOT datistemplate"
        )
        while (row := bare.execute(query).fetchone()) is not None and row[0] > 0:
            time.sleep(0.001)

    def ours() -> None:
        dbs.drop_later(dbs.create("test_x"))

    def ours_engine() -> None:
        name = dbs.create("test_x")
        engine = create_engine(endpoint.with_dbname(name), "psycopg")
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT 1"))
        engine.dispose()
        dbs.drop_later(name)

    def bare_create_drop() -> None:
        bare.execute(f"CREATE DATABASE bench_x TEMPLATE {BARE_TEMPLATE}")
        bare.execute("DROP DATABASE bench_x")

    def bare_connect() -> None:
        bare.execute(f"CREATE DATABASE bench_x TEMPLATE {BARE_TEMPLATE}")
        with psycopg.connect(**endpoint.with_dbname("bench_x").dbapi_kwargs("psycopg")) as conn:
            conn.execute("SELECT 1")
        bare.execute("DROP DATABASE bench_x WITH (FORCE)")

    try:
        bare.execute(f"CREATE DATABASE {BARE_TEMPLATE}")
        steps = {"ours": ours, "bare": bare_create_drop}
        steps |= {"ours+engine": ours_engine, "bare+connect": bare_connect}
        # Round 0 is discarded: it creates pgtopo_template (once per session, not per test)
        # and pays first-use costs such as SQLAlchemy's dialect setup.
        for round_ in range(repeat + 1):
            for key, step in steps.items():
                settle()
                elapsed = common.timed(step)
                if round_:
                    samples[key].append(elapsed)
    finally:
        dbs.close()
        bare.close()
    return samples


def main() -> None:
    parser = common.arg_parser(__doc__, repeat=15, repeat_help="repetitions per measurement")
    parser.add_argument(
        "--cold", type=common.at_least_one, default=3, help="cold (initdb) bring-ups, at least 1"
    )
    args = parser.parse_args()
    repeat, cold = args.repeat, args.cold

    with common.scratch_dir() as root:
        bring = measure_bring_up(root, repeat, cold)
        with common.cache_dir(root / "cache-cold-0"):
            _, backend, topology = bring_up()
        try:
            per_test = measure_per_test(topology, repeat)
        finally:
            shut_down(backend, topology)

    common.report(
        "measurement",
        [
            ("bring-up cold (initdb)", bring["cold"]),
            ("bring-up warm (cached)", bring["warm"]),
            ("bare cp -a + postgres + poll", bring["bare"]),
            ("per-test db: create + drop_later", per_test["ours"]),
            ("bare CREATE + DROP", per_test["bare"]),
            ("per-test db + engine + SELECT 1", per_test["ours+engine"]),
            ("bare CREATE + connect + SELECT 1 + DROP", per_test["bare+connect"]),
        ],
    )
    print()
    warm = common.median_ratio(bring["warm"], bring["bare"])
    db = common.median_ratio(per_test["ours"], per_test["bare"])
    db_engine = common.median_ratio(per_test["ours+engine"], per_test["bare+connect"])
    print(common.verdict("warm bring-up / bare start", warm, "<=", BRING_UP_TARGET))
    print(common.verdict("per-test database / bare create+drop", db, "<=", PER_TEST_TARGET))
    label = "per-test database + engine / bare create+connect+drop"
    print(common.verdict(label, db_engine, "<=", PER_TEST_TARGET))


if __name__ == "__main__":
    main()
