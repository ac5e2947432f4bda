"""Prometheus gauges for a SQLAlchemy connection pool, read at scrape time.

Needs the `prometheus` extra: ``pip install 'pytest-pgtopo[prometheus]'``. Nothing runs in the
background: the collector reads the pool when Prometheus scrapes.

| gauge | from |
| --- | --- |
| `sqlalchemy_pool_size` | `pool.size()`: connections kept open (pool_size) |
| `sqlalchemy_pool_checked_out` | `pool.checkedout()`: in use by the application |
| `sqlalchemy_pool_checked_in` | `pool.checkedin()`: open and idle in the pool |
| `sqlalchemy_pool_overflow` | `max(pool.overflow(), 0)`: open beyond pool_size |

Each has one label, `engine`. `pool.overflow()` itself is negative until the pool has opened
pool_size connections (-2 for a fresh pool of 2); the gauge reports 0 there.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING

import sqlalchemy
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import QueuePool

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

INSTALL_HINT = "pip install 'pytest-pgtopo[prometheus]'"
GAUGES = {
    "sqlalchemy_pool_size": "Connections the pool keeps open (pool_size).",
    "sqlalchemy_pool_checked_out": "Connections checked out by the application.",
    "sqlalchemy_pool_checked_in": "Open connections idle in the pool.",
    "sqlalchemy_pool_overflow": "Connections open beyond pool_size (at most max_overflow).",
}


def register_pool_gauges(
    engine: sqlalchemy.Engine | AsyncEngine,
    registry: CollectorRegistry | None = None,
    *,
    name: str = "default",
) -> None:
    """Export `engine`'s pool as gauges labelled `engine=name` in `registry` (default: the
    global `prometheus_client.REGISTRY`).

    Several engines may share a registry under different names. The engine is held weakly, and
    `engine.pool` is looked up at each scrape, so the gauges follow the new pool after
    `engine.dispose()`. The pool must be a QueuePool (the default; not NullPool or StaticPool).
    """
    try:
        import prometheus_client
    except ImportError as exc:
        raise ImportError(
            f"register_pool_gauges needs prometheus_client; install it with: {INSTALL_HINT}"
        ) from exc
    sync_engine = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
    if not isinstance(sync_engine.pool, QueuePool):
        raise TypeError(
            f"pool gauges need a QueuePool; engine {name!r} uses {type(sync_engine.pool).__name__}"
        )
    registry = prometheus_client.REGISTRY if registry is None else registry
    with _LOCK:
        collector = _COLLECTORS.get(registry)
        if collector is None:
            collector = _PoolCollector()
            registry.register(collector)
            _COLLECTORS[registry] = collector
        collector.add(name, sync_engine)


class _PoolCollector:
    """One per registry, for all its engines: a registry refuses two collectors of one name."""

    def __init__(self) -> None:
        self._engines: dict[str, weakref.ref[sqlalchemy.Engine]] = {}
        self._lock = threading.Lock()

    def add(self, name: str, engine: sqlalchemy.Engine) -> None:
        with self._lock:
            known = self._engines.get(name)
            if known is not None and known() is not None:
                raise ValueError(f"an engine named {name!r} already has pool gauges here")
            self._engines[name] = weakref.ref(engine)

    def describe(self) -> Iterator[Metric]:
        return self._families(with_samples=False)

    def collect(self) -> Iterator[Metric]:
        return self._families(with_samples=True)

    def _families(self, *, with_samples: bool) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        families = {
            metric: GaugeMetricFamily(metric, text, labels=["engine"])
            for metric, text in GAUGES.items()
        }
        with self._lock:
            engines = list(self._engines.items())
        for name, ref in engines if with_samples else ():
            engine = ref()
            if engine is None:
                with self._lock:
                    if self._engines.get(name) is ref:
                        del self._engines[name]
                continue
            pool = engine.pool
            assert isinstance(pool, QueuePool)
            values = {
                "sqlalchemy_pool_size": pool.size(),
                "sqlalchemy_pool_checked_out": pool.checkedout(),
                "sqlalchemy_pool_checked_in": pool.checkedin(),
                "sqlalchemy_pool_overflow": max(pool.overflow(), 0),
            }
            for metric, value in values.items():
                families[metric].add_metric([name], value)
        yield from families.values()


_LOCK = threading.Lock()
_COLLECTORS: weakref.WeakKeyDictionary[CollectorRegistry, _PoolCollector] = (
    weakref.WeakKeyDictionary()
)
