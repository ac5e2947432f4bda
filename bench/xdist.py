"""xdist: servers per worker (what pytest-pgtopo does) against one server shared by all workers.

Run from the repository root:  python bench/xdist.py [--repeat N] [--workers 2,4]

The 200-test suite of vs_pytest_postgresql.py (a fresh database per test, a table, 10 rows,
read back, psycopg 3), run with `-n N` two ways, alternating in one run:
- per worker: the default, each xdist worker starts its own PostgreSQL;
- shared: every worker uses one PostgreSQL started once by this script, through the external
  backend (per-worker databases on one server: what a shared design would do at best). Its
  start-up is not in its times; the script prints it so it can be added.
Medians over `--repeat` rounds after a discarded warm-up round; prints ratios, exits 0.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

# isort: split
# `python bench/<name>.py` puts bench/ on sys.path: these import as plain modules.
import common
from vs_pytest_postgresql import OURS_CONFTEST, PG_BINDIR, Command, write_suite

from pytest_pgtopo.topologies.plain import PlainTopology


def command(label: str, suite: Path, root: Path, workers: int, *extra: str) -> Command:
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "pytest_pgtopo",
            "-p", "xdist.plugin", "-n", str(workers), "--pgtopo-driver", "psycopg", *extra]  # fmt: skip
    env = {
        **os.environ,
        "PGTOPO_CACHE_DIR": str(root / "pgtopo-cache"),
        "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
    }
    return Command(label, argv, suite, env)


def main() -> None:
    parser = common.arg_parser(__doc__, repeat=5, repeat_help="rounds after the warm-up round")
    parser.add_argument("--workers", default="2,4", help="comma-separated -n values (default 2,4)")
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]

    with common.scratch_dir() as root, common.cache_dir(root / "pgtopo-cache"):
        suite = write_suite(root / "suite", OURS_CONFTEST)
        backend = common.local_backend(root)
        try:
            start = time.perf_counter()
            shared = PlainTopology.start(backend)
            bring_up = common.ms_since(start)
            url = shared.primary.describe()
            pairs = [
                (
                    command(
                        f"per worker, -n {n}", suite, root, n, f"--pgtopo-pg-bindir={PG_BINDIR}"
                    ),
                    command(
                        f"shared, -n {n}",
                        suite,
                        root,
                        n,
                        "--pgtopo-backend=external",
                        f"--pgtopo-external-url={url}",
                    ),
                )
                for n in counts
            ]
            for round_ in range(args.repeat + 1):  # Round 0 fills caches: discarded.
                for a, b in pairs:
                    for cmd in (a, b) if round_ % 2 == 0 else (b, a):
                        elapsed = cmd.run()
                        if round_:
                            cmd.samples.append(elapsed)
                print(f"round {round_}{' (warm-up, discarded)' if not round_ else ''} done")
        finally:
            backend.close()  # Stops the shared server too.

    print()
    common.report("whole pytest run (200 tests)", [(c.label, c.samples) for p in pairs for c in p])
    print()
    print(f"shared server start-up (once, not in the times above): {bring_up:.0f} ms")
    for per_worker, one in pairs:
        ratio = common.median_ratio(one.samples, per_worker.samples)
        print(common.info(f"{one.label} / {per_worker.label}", ratio))


if __name__ == "__main__":
    main()
