"""A topology built from a helper thread outlives that thread.

Linux sends the parent-death signal (prctl PR_SET_PDEATHSIG, which takes the servers down when
pytest is killed with kill -9) when the THREAD that forked the child exits, not the process.
tests/test_cleanup.py proves the kill -9 half still holds.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from pytest_pgtopo.backends.local import LocalBackend
from pytest_pgtopo.topologies.bouncer import BouncerTopology

from .support import query_once, wait_for

SERVING_FOR = 2.0
"""Seconds of queries after the thread ended: the signal, had it come, acts within ~10 ms."""


def test_a_topology_built_in_a_thread_keeps_serving_after_the_thread_ends(
    backend: LocalBackend,
) -> None:
    built: list[BouncerTopology] = []
    errors: list[BaseException] = []
    native_ids: list[int] = []

    def build() -> None:
        native_ids.append(threading.get_native_id())
        try:
            built.append(BouncerTopology.start(backend))
        except Exception as exc:  # noqa: BLE001 - reported by the test's own thread
            errors.append(exc)

    helper = threading.Thread(target=build, name="short-lived builder")
    helper.start()
    helper.join(timeout=120)
    assert not helper.is_alive()
    assert not errors, errors
    topology = built[0]
    try:
        # The kernel sends the signal as the OS thread exits: wait until it is really gone.
        task = Path(f"/proc/self/task/{native_ids[0]}")
        wait_for(lambda: not task.exists(), "the helper's OS thread to exit", 30)
        started = query_once(topology.primary, "psycopg", "SELECT pg_postmaster_start_time()")
        queries = 0
        deadline = time.monotonic() + SERVING_FOR
        while time.monotonic() < deadline:  # Real queries, each on a new connection.
            assert query_once(topology.bouncer, "psycopg", "SELECT 1", pooler="transaction") == 1
            assert (
                query_once(topology.primary, "psycopg", "SELECT pg_postmaster_start_time()")
                == started
            )
            queries += 1
        assert queries >= 5, f"only {queries} rounds of queries in {SERVING_FOR} s"
        for process in (topology.server.process, topology.pgbouncer.process):
            assert process is not None
            assert process.poll() is None, "a server of the topology exited"
    finally:
        topology.stop()
