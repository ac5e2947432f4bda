"""TLS benchmark: what verify-full TLS adds to opening a connection, per driver, next to plaintext.

Run from the repository root:  python bench/tls.py [--repeat N]

Every figure is a median over repetitions measured in this one run, TLS and plaintext
interleaved so that machine noise hits both alike. There is no target: it prints a report and
always exits 0.
"""

from __future__ import annotations

import asyncio
import importlib
import socket
import ssl
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pytest_pgtopo import drivers
from pytest_pgtopo.endpoint import Endpoint
from pytest_pgtopo.topologies.plain import PlainTopology
from pytest_pgtopo.topologies.tls import TlsTopology

# isort: split
# bench/common.py: `python bench/<name>.py` puts bench/ on sys.path, so it imports as `common`.
import common

DRIVERS = ("asyncpg", "psycopg", "psycopg2", "pg8000")
# What turns TLS off outright. By default libpq and asyncpg use sslmode=prefer and pg8000 sends
# an SSLRequest too: against a server with ssl=off they fall back to plaintext after one round
# trip, so the driver defaults measure "plaintext after a refused TLS request", not plaintext.
TLS_OFF: dict[str, dict[str, Any]] = {
    "asyncpg": {"ssl": False},
    "psycopg": {"sslmode": "disable"},
    "psycopg2": {"sslmode": "disable"},
    "pg8000": {"ssl_context": False},
}
PLAIN = "plaintext"
REUSED = "TLS, context reused"
FRESH = "TLS, context per conn"
DEFAULT = "plain, driver default"
# pg8000 only (libpq and asyncpg set TCP_NODELAY themselves): TLS, context reused, over a socket
# we connect with TCP_NODELAY and hand over as `sock`, to tell Nagle's algorithm from TLS.
NODELAY = "TLS, reused, NODELAY"
COLUMNS = (PLAIN, REUSED, FRESH, DEFAULT, NODELAY)

Kwargs = Callable[[], dict[str, Any]]
Sample = Callable[[Kwargs], float]
Samples = dict[str, dict[str, list[float]]]


def sync_sampler(driver: str) -> Sample:
    """Time kwargs() + connect + SELECT 1 + close with a sync driver's own connect()."""
    module = importlib.import_module("pg8000.dbapi" if driver == "pg8000" else driver)

    def once(kwargs: Kwargs) -> None:
        conn = module.connect(**kwargs())
        try:
            cursor = conn.cursor()
            cursor.execute("SELECT 1")
            cursor.fetchone()
            cursor.close()
        finally:
            conn.close()

    return lambda kwargs: common.timed(lambda: once(kwargs))


def asyncpg_sampler(runner: asyncio.Runner) -> Sample:
    """The same for asyncpg, every sample on one event loop; the timing excludes running it."""
    asyncpg = importlib.import_module("asyncpg")

    async def once(kwargs: Kwargs) -> float:
        start = time.perf_counter()
        conn = await asyncpg.connect(**kwargs())
        try:
            await conn.fetchval("SELECT 1")
        finally:
            await conn.close()
        return common.ms_since(start)

    return lambda kwargs: runner.run(once(kwargs))


def variants(driver: str, tls: Endpoint, plain: Endpoint) -> dict[str, Kwargs]:
    """How each column gets its connect() kwargs; calling the function is part of the timing."""
    plain_kwargs = {**plain.dbapi_kwargs(driver), **TLS_OFF[driver]}
    default_kwargs = plain.dbapi_kwargs(driver)
    # Built once, as the SQLAlchemy recipe builds connect_args once per engine.
    reused_kwargs = tls.dbapi_kwargs(driver)
    columns: dict[str, Kwargs] = {
        PLAIN: lambda: plain_kwargs,
        REUSED: lambda: reused_kwargs,
        # What naive code does: a new SSLContext (for asyncpg and pg8000) every connection.
        FRESH: lambda: tls.dbapi_kwargs(driver),
        DEFAULT: lambda: default_kwargs,
    }
    if driver == "pg8000":

        def nodelay() -> dict[str, Any]:
            sock = socket.create_connection((tls.host, tls.port))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # pg8000 uses `sock` when given; `host` stays for the certificate's name check.
            return {**reused_kwargs, "sock": sock}

        columns[NODELAY] = nodelay
    return columns


def measure(tls: Endpoint, plain: Endpoint, installed: list[str], repeat: int) -> Samples:
    with asyncio.Runner() as runner:
        samplers = {
            driver: asyncpg_sampler(runner) if driver == "asyncpg" else sync_sampler(driver)
            for driver in installed
        }
        kwargs = {driver: variants(driver, tls, plain) for driver in installed}
        samples: Samples = {
            driver: {column: [] for column in kwargs[driver]} for driver in installed
        }
        # Round 0 is discarded: it pays first-use costs (imports, libpq and OpenSSL set-up).
        for round_ in range(repeat + 1):
            for driver in installed:
                # Rotate the order each round so no column always follows the same one.
                columns = list(kwargs[driver])
                shift = round_ % len(columns)
                for column in columns[shift:] + columns[:shift]:
                    elapsed = samplers[driver](kwargs[driver][column])
                    if round_:
                        samples[driver][column].append(elapsed)
    return samples


def measure_contexts(ca_path: Path, repeat: int) -> dict[str, list[float]]:
    """What building an SSLContext costs on its own, with our CA and with the system's."""
    samples: dict[str, list[float]] = {"ours": [], "system": []}
    for round_ in range(repeat + 1):
        ours = common.timed(lambda: ssl.create_default_context(cafile=str(ca_path)))
        system = common.timed(ssl.create_default_context)
        if round_:
            samples["ours"].append(ours)
            samples["system"].append(system)
    return samples


def report_grid(samples: Samples) -> None:
    """The median per driver and column, then the spread behind each median."""
    width = max(len("driver"), *(len(driver) for driver in samples))
    shown = [c for c in COLUMNS if any(c in columns for columns in samples.values())]
    cell = max(len(column) for column in shown)
    print(f"{'driver':<{width}}" + "".join(f"  {column:>{cell}}" for column in shown))
    for driver, columns in samples.items():
        cells = [
            f"{statistics.median(columns[c]):{cell}.2f}" if c in columns else f"{'-':>{cell}}"
            for c in shown
        ]
        print(f"{driver:<{width}}" + "".join(f"  {text}" for text in cells))
    print()
    # The spread behind each median.
    rows = [
        (f"{d} / {c}", values) for d, columns in samples.items() for c, values in columns.items()
    ]
    common.report("measurement", rows, digits=2)


def ratio(label: str, numerator: list[float], denominator: list[float], note: str = "") -> str:
    return common.info(label, common.median_ratio(numerator, denominator), note)


def main() -> None:
    parser = common.arg_parser(__doc__, repeat=51, repeat_help="connections per driver and column")
    repeat = parser.parse_args().repeat

    installed = [name for name in DRIVERS if drivers.get(name).is_installed()]
    missing = [name for name in DRIVERS if name not in installed]
    if not installed:
        print(f"none of {', '.join(DRIVERS)} is installed: nothing to measure")
        return

    with common.scratch_dir() as root, common.cache_dir(root / "cache"):
        backend = common.local_backend(root)
        tls: TlsTopology | None = None
        plain: PlainTopology | None = None
        try:
            tls = TlsTopology.start(backend)
            plain = PlainTopology.start(backend)
            assert tls.primary.tls is not None
            mode = tls.primary.tls.mode
            samples = measure(tls.primary, plain.primary, installed, repeat)
            contexts = measure_contexts(tls.ca_path, repeat)
        finally:
            if tls is not None:
                tls.stop()
            if plain is not None:
                plain.stop()
            backend.close()

    print(f"median ms per raw connect() + SELECT 1 + close, n={repeat}; TLS is {mode}")
    if missing:
        print(f"not installed, skipped: {', '.join(missing)}")
    print()
    report_grid(samples)
    print()
    print(
        f"INFO ssl.create_default_context(cafile=CA) alone: "
        f"{statistics.median(contexts['ours']):.2f} ms median"
    )
    print(
        f"INFO ssl.create_default_context() alone (system CA store): "
        f"{statistics.median(contexts['system']):.2f} ms median"
    )
    print()
    for driver, columns in samples.items():
        print(
            ratio(
                f"{driver} TLS / plaintext connect",
                columns[REUSED],
                columns[PLAIN],
                "; context reused, as in the SQLAlchemy recipe",
            )
        )
    for driver, columns in samples.items():
        print(
            ratio(
                f"{driver} TLS context per connection / plaintext connect",
                columns[FRESH],
                columns[PLAIN],
            )
        )
    for driver, columns in samples.items():
        print(
            ratio(
                f"{driver} plain driver default / plaintext connect",
                columns[DEFAULT],
                columns[PLAIN],
            )
        )
    if "pg8000" in samples:
        columns = samples["pg8000"]
        print(
            ratio(
                "pg8000 TLS over a TCP_NODELAY socket / plaintext connect",
                columns[NODELAY],
                columns[PLAIN],
            )
        )


if __name__ == "__main__":
    main()
