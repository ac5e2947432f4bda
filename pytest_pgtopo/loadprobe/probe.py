"""The probe itself: a writer (and readers) on a sync Engine (threads) or an AsyncEngine (tasks)."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from ..quoting import quote_ident
from ..waiting import wait_until
from .report import Failure, LoadProbeError, ProbeReport, _window, classify

TABLE = "pgtopo_probe"


class LoadProbe:
    """Writes one row every `interval` seconds (and reads with `readers` readers, on
    `read_engine` or the same engine) until the block ends."""

    def __init__(
        self,
        engine: sa.Engine | AsyncEngine,
        *,
        interval: float = 0.01,
        readers: int = 0,
        read_engine: sa.Engine | AsyncEngine | None = None,
        check_timeout: float = 60.0,
        table: str = TABLE,
    ) -> None:
        """`table` is created if missing; two probes on one database need different tables."""
        self.engine = engine
        self.read_engine = read_engine or engine
        if isinstance(self.engine, AsyncEngine) != isinstance(self.read_engine, AsyncEngine):
            raise TypeError("engine and read_engine must both be sync or both async")
        self.interval = interval
        self.readers = readers
        self.check_timeout = check_timeout
        name = quote_ident(table)
        self._create = sa.text(
            f"CREATE TABLE IF NOT EXISTS {name} (id bigint PRIMARY KEY, at timestamptz DEFAULT now())"
        )
        self._insert = sa.text(f"INSERT INTO {name} (id) VALUES (:id)")
        self._count = sa.text(f"SELECT count(*) FROM {name}")
        self._ids = sa.text(f"SELECT id FROM {name}")
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._running = threading.Event()  # Cleared by pause().
        self._idle = threading.Event()  # Set while the writer is paused between writes.
        self._next_id = 0
        self._start = 0.0
        self.acked: list[tuple[int, float]] = []
        """(id, seconds since start) of every acknowledged write, in order."""
        self.failures: list[Failure] = []
        self.reads = 0
        self.read_failures: list[Failure] = []
        self._threads: list[threading.Thread] = []
        self._tasks: list[asyncio.Task[None]] = []

    # --- recording ---------------------------------------------------------------------------

    def now(self) -> float:
        return time.monotonic() - self._start

    def _take_id(self) -> int:
        with self._lock:
            self._next_id += 1
            return self._next_id

    def _record(self, ident: int | None, exc: BaseException | None, *, read: bool) -> None:
        at = self.now()
        with self._lock:
            if exc is None:
                if read:
                    self.reads += 1
                else:
                    self.acked.append((ident or 0, at))
                return
            error, sqlstate = classify(exc)
            failure = Failure(at, error, sqlstate, str(exc).splitlines()[0][:200])
            (self.read_failures if read else self.failures).append(failure)

    # --- sync --------------------------------------------------------------------------------

    def __enter__(self) -> LoadProbe:
        engine = self._sync(self.engine)
        try:
            with engine.begin() as conn:
                conn.execute(self._create)
        except Exception as exc:
            raise LoadProbeError(
                f"load probe: the engine cannot reach its server ({engine.url.render_as_string()}): "
                f"{classify(exc)[0]}: {str(exc).splitlines()[0]}"
            ) from exc
        self._start = time.monotonic()
        self._running.set()
        self._threads = [threading.Thread(target=self._write_loop, daemon=True, name="probe-w")]
        self._threads += [
            threading.Thread(target=self._read_loop, daemon=True, name="probe-r")
            for _ in range(self.readers)
        ]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def halt(self) -> None:
        """Stop whatever runs, sync or async, without reporting (a fixture's teardown)."""
        self._stop.set()
        self._running.set()
        for thread in self._threads:
            thread.join(self.check_timeout)
        for task in self._tasks:
            task.cancel()

    def stop(self) -> None:
        self._stop.set()
        self._running.set()
        for thread in self._threads:
            thread.join(self.check_timeout)

    def _write_loop(self) -> None:
        engine = self._sync(self.engine)
        while not self._stop.is_set():
            if not self._running.is_set():
                self._idle.set()
                self._running.wait()
                self._idle.clear()
                continue
            ident = self._take_id()
            try:
                with engine.begin() as conn:
                    conn.execute(self._insert, {"id": ident})
            except Exception as exc:  # noqa: BLE001 - every failure is what the probe records.
                self._record(ident, exc, read=False)
            else:
                self._record(ident, None, read=False)
            self._stop.wait(self.interval)

    def _read_loop(self) -> None:
        engine = self._sync(self.read_engine)
        while not self._stop.is_set():
            try:
                with engine.connect() as conn:
                    conn.execute(self._count)
            except Exception as exc:  # noqa: BLE001
                self._record(None, exc, read=True)
            else:
                self._record(None, None, read=True)
            self._stop.wait(self.interval)

    def pause(self, timeout: float = 30.0) -> None:
        """Stop writing (a planned switchover); returns once no write is in flight."""
        self._running.clear()
        if self._threads:
            wait_until(self._idle.is_set, timeout=timeout, explain=lambda: "writer did not pause")

    def resume(self) -> None:
        self._running.set()

    def wait_for_acks(self, count: int, timeout: float = 30.0) -> None:
        """Until `count` more writes are acknowledged than when called."""
        target = len(self.acked) + count
        wait_until(
            lambda: len(self.acked) >= target,
            timeout=timeout,
            explain=lambda: (
                f"load probe: {count} acknowledged writes not seen in {timeout:.0f} s; "
                f"last errors: {self.failures[-3:]}"
            ),
        )

    def wait_recovered(self, acks: int = 5, timeout: float = 60.0) -> None:
        """Until `acks` writes were acknowledged after the call (and so after the fault)."""
        self.wait_for_acks(acks, timeout)

    def report(self, engine: sa.Engine | None = None) -> ProbeReport:
        """Stop, read back the table (through `engine`, default the probe's), and report."""
        self.stop()
        check = self._sync(engine or self.engine)
        present: set[int] = set()

        def read() -> bool:
            try:
                with check.connect() as conn:
                    present.update(conn.scalars(self._ids))
                return True
            except Exception:  # noqa: BLE001 - retried: the engine may still be recovering.
                return False

        self._check(read)
        return self._report(present)

    # --- async -------------------------------------------------------------------------------

    async def __aenter__(self) -> LoadProbe:
        engine = self._async(self.engine)
        try:
            async with engine.begin() as conn:
                await conn.execute(self._create)
        except Exception as exc:
            raise LoadProbeError(
                f"load probe: the engine cannot reach its server ({engine.url.render_as_string()}): "
                f"{classify(exc)[0]}: {str(exc).splitlines()[0]}"
            ) from exc
        self._start = time.monotonic()
        self._running.set()
        self._tasks = [asyncio.create_task(self._awrite_loop())]
        self._tasks += [asyncio.create_task(self._aread_loop()) for _ in range(self.readers)]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.astop()

    async def astop(self) -> None:
        self._stop.set()
        self._running.set()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=self.check_timeout)

    async def _awrite_loop(self) -> None:
        engine = self._async(self.engine)
        while not self._stop.is_set():
            if not self._running.is_set():
                self._idle.set()
                await asyncio.sleep(self.interval)  # Polls the pause flag; no condition to await.
                continue
            self._idle.clear()
            ident = self._take_id()
            try:
                async with engine.begin() as conn:
                    await conn.execute(self._insert, {"id": ident})
            except Exception as exc:  # noqa: BLE001
                self._record(ident, exc, read=False)
            else:
                self._record(ident, None, read=False)
            await asyncio.sleep(self.interval)

    async def _aread_loop(self) -> None:
        engine = self._async(self.read_engine)
        while not self._stop.is_set():
            try:
                async with engine.connect() as conn:
                    await conn.execute(self._count)
            except Exception as exc:  # noqa: BLE001
                self._record(None, exc, read=True)
            else:
                self._record(None, None, read=True)
            await asyncio.sleep(self.interval)

    async def apause(self, timeout: float = 30.0) -> None:
        self._running.clear()
        await self._await(self._idle.is_set, timeout, "writer did not pause")

    async def await_acks(self, count: int, timeout: float = 30.0) -> None:
        target = len(self.acked) + count
        await self._await(
            lambda: len(self.acked) >= target,
            timeout,
            f"{count} acknowledged writes not seen; last errors: {self.failures[-3:]}",
        )

    async def await_recovered(self, acks: int = 5, timeout: float = 60.0) -> None:
        await self.await_acks(acks, timeout)

    async def areport(self, engine: AsyncEngine | None = None) -> ProbeReport:
        await self.astop()
        check = self._async(engine or self.engine)
        present: set[int] = set()
        deadline = time.monotonic() + self.check_timeout
        while True:
            try:
                async with check.connect() as conn:
                    present.update((await conn.scalars(self._ids)).all())
                break
            except Exception as exc:
                if time.monotonic() > deadline:
                    raise LoadProbeError(
                        f"load probe: could not read back the writes: {exc}"
                    ) from exc
                await asyncio.sleep(0.05)  # Retry pacing while the engine recovers.
        return self._report(present)

    @staticmethod
    async def _await(ready: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if time.monotonic() > deadline:
                raise LoadProbeError(f"load probe: {what} within {timeout:.0f} s")
            await asyncio.sleep(0.01)  # Lets the probe's tasks run; polls a counter they bump.

    # --- shared ------------------------------------------------------------------------------

    def _check(self, read: Callable[[], bool]) -> None:
        wait_until(
            read,
            timeout=self.check_timeout,
            explain=lambda: "load probe: could not read back the writes",
            longest=0.1,
        )

    def _report(self, present: set[int]) -> ProbeReport:
        acked = list(self.acked)
        failures = list(self.failures)
        return ProbeReport(
            acknowledged=len(acked),
            failures=failures,
            lost=sorted(ident for ident, _ in acked if ident not in present),
            error_window=_window(failures, acked, first=True),
            outage=_window(failures, acked, first=False),
            longest_gap=max((b[1] - a[1] for a, b in itertools.pairwise(acked)), default=0.0),
            reads=self.reads,
            read_failures=list(self.read_failures),
        )

    @staticmethod
    def _sync(engine: Any) -> sa.Engine:
        if isinstance(engine, AsyncEngine):
            raise TypeError(
                "an AsyncEngine's probe runs as `async with`, and reports with areport()"
            )
        return engine  # type: ignore[no-any-return]

    @staticmethod
    def _async(engine: Any) -> AsyncEngine:
        if not isinstance(engine, AsyncEngine):
            raise TypeError("a sync Engine's probe runs as `with`, and reports with report()")
        return engine
