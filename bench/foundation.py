"""Foundation benchmark: pg_plain bring-up and per-test databases, next to doing it by hand.

Run from the repository root:  python bench/foundation.py [--repeat N] [--cold N]

Every figure is a median over repetitions measured in this one run, ours and bare interleaved
so that machine noise hits both alike. It prints a report and always exits 0.
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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import sqlalchemy

from pytest_pgtopo import create_engine
from pytest_pgtopo.isolation import Databases
from pytest_pgtopo.runners import local
from pytest_pgtopo.servers.initdb_cache import SUPERUSER, CachedCluster
from pytest_pgtopo.servers.local_backend import LocalBackend
from pytest_pgtopo.servers.postgres import LOOPBACK, free_port
from pytest_pgtopo.topologies.plain import PlainTopology
from pytest_pgtopo.workspace import default_root

BRING_UP_TARGET = 2.0
PER_TEST_TARGET = 1.5
POLL_INTERVAL = 0.005
BARE_TEMPLATE = "bench_template"

Samples = dict[str, list[float]]


@contextmanager
def cache_dir(path: Path) -> Iterator[None]:
    """Point the initdb cache at `path` for the duration."""
    old = os.environ.get("PGTOPO_CACHE_DIR")
    os.environ["PGTOPO_CACHE_DIR"] = str(path)
    try:
        yield
    finally:
        if old is None:
            del os.environ["PGTOPO_CACHE_DIR"]
        else:
            os.environ["PGTOPO_CACHE_DIR"] = old


def timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def bring_up() -> tuple[float, LocalBackend, PlainTopology]:
    """Time LocalBackend() + PlainTopology.start(); the caller stops what it returns."""
    tmp_root = default_root()
    start = time.perf_counter()
    backend = LocalBackend(
        pg_bindir=None, pg_bindir_source="default", tmp_root=tmp_root, keep=False
    )
    try:
        topology = PlainTopology.start(backend)
    except BaseException:
        backend.close()
        raise
    return (time.perf_counter() - start) * 1000, backend, topology


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
        settings = {"port": port, "listen_addresses": LOOPBACK, "unix_socket_directories": data}
        options = [arg for name, value in settings.items() for arg in ("-c", f"{name}={value}")]
        process = local.spawn(
            [postgres, "-D", str(data), *options],
            user=user,
            cwd=area,
            log_path=area / "bare.log",
        )
        deadline = start + 60
        while True:
            try:
                conn = psycopg.connect(
                    host=LOOPBACK,
                    port=port,
                    user=SUPERUSER,
                    password=cluster.password,
                    dbname="postgres",
                )
                break
            except psycopg.OperationalError:
                if process.poll() is not None or time.perf_counter() > deadline:
                    raise
                time.sleep(POLL_INTERVAL)
        elapsed = (time.perf_counter() - start) * 1000
        conn.close()
        return elapsed
    finally:
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)
            process.wait(30)
        shutil.rmtree(data, ignore_errors=True)


def measure_bring_up(root: Path, repeat: int, cold: int) -> Samples:
    samples: Samples = {"cold": [], "warm": [], "bare": []}
    for i in range(cold):
        with cache_dir(root / f"cache-cold-{i}"):
            elapsed, backend, topology = bring_up()
            shut_down(backend, topology)
        samples["cold"].append(elapsed)

    area = root / "bare"
    area.mkdir()
    user = local.server_user()
    local.chown_tree(root, user)
    with cache_dir(root / "cache-cold-0"):
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
                elapsed = timed(step)
                if round_:
                    samples[key].append(elapsed)
    finally:
        dbs.close()
        bare.close()
    return samples


def verdict(label: str, ours: list[float], bare: list[float], target: float) -> str:
    ratio = statistics.median(ours) / statistics.median(bare)
    status = "OK" if ratio <= target else "MISSED"
    return f"RATIO {label}: {ratio:.2f}x (target <= {target:g}x) {status}"


def report(rows: list[tuple[str, list[float]]]) -> None:
    width = max(len(name) for name, _ in rows)
    print(f"{'measurement':<{width}}  {'median ms':>9}  {'min ms':>8}  {'max ms':>8}  {'n':>3}")
    for name, values in rows:
        print(
            f"{name:<{width}}  {statistics.median(values):9.1f}  {min(values):8.1f}"
            f"  {max(values):8.1f}  {len(values):>3}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15, help="repetitions per measurement")
    parser.add_argument("--cold", type=int, default=3, help="cold (initdb) bring-ups, at least 1")
    args = parser.parse_args()
    repeat, cold = max(1, args.repeat), max(1, args.cold)

    root = Path(tempfile.mkdtemp(prefix="pgtopo_bench-", dir="/dev/shm"))
    try:
        bring = measure_bring_up(root, repeat, cold)
        with cache_dir(root / "cache-cold-0"):
            _, backend, topology = bring_up()
        try:
            per_test = measure_per_test(topology, repeat)
        finally:
            shut_down(backend, topology)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    report(
        [
            ("bring-up cold (initdb)", bring["cold"]),
            ("bring-up warm (cached)", bring["warm"]),
            ("bare cp -a + postgres + poll", bring["bare"]),
            ("per-test db: create + drop_later", per_test["ours"]),
            ("bare CREATE + DROP", per_test["bare"]),
            ("per-test db + engine + SELECT 1", per_test["ours+engine"]),
            ("bare CREATE + connect + SELECT 1 + DROP", per_test["bare+connect"]),
        ]
    )
    print()
    print(verdict("warm bring-up / bare start", bring["warm"], bring["bare"], BRING_UP_TARGET))
    print(
        verdict(
            "per-test database / bare create+drop",
            per_test["ours"],
            per_test["bare"],
            PER_TEST_TARGET,
        )
    )
    print(
        verdict(
            "per-test database + engine / bare create+connect+drop",
            per_test["ours+engine"],
            per_test["bare+connect"],
            PER_TEST_TARGET,
        )
    )


if __name__ == "__main__":
    main()
