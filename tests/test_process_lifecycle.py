"""The shared process life cycle: port retry, undo on a failed block, release of everything."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from pytest_pgtopo.backends.local import LocalBackend
from pytest_pgtopo.config import PgtopoConfig
from pytest_pgtopo.servers import process
from pytest_pgtopo.servers.process import cleanup_on_error, release_all
from pytest_pgtopo.session import PgtopoSession
from pytest_pgtopo.types import LOOPBACK


def test_cleanup_on_error_undoes_in_reverse_and_reraises_the_original() -> None:
    done: list[str] = []

    def failing_undo() -> None:
        done.append("failing undo")
        raise RuntimeError("undo failed too")

    def fail_after_three_steps() -> None:
        with cleanup_on_error() as on_error:
            on_error(lambda: done.append("first"))
            on_error(failing_undo)
            on_error(lambda: done.append("third"))
            raise ValueError("the real problem")

    with pytest.raises(ValueError, match="the real problem"):
        fail_after_three_steps()
    assert done == ["third", "failing undo", "first"]


def test_cleanup_on_error_runs_nothing_on_success() -> None:
    done: list[str] = []
    with cleanup_on_error() as on_error:
        on_error(lambda: done.append("undo"))
    assert done == []


def test_release_all_runs_every_step_and_raises_every_error() -> None:
    done: list[str] = []

    def fail(message: str) -> None:
        done.append(message)
        raise RuntimeError(message)

    with pytest.raises(ExceptionGroup) as info:
        release_all([lambda: fail("a"), lambda: done.append("b"), lambda: fail("c")], "things")
    assert done == ["a", "b", "c"]
    assert "could not release things" in str(info.value)
    assert [str(e) for e in info.value.exceptions] == ["a", "c"]
    with pytest.raises(RuntimeError, match=r"^only$"):  # One failure is raised as itself.
        release_all([lambda: fail("only")], "things")


def test_a_port_taken_before_the_server_binds_it_is_retried(
    backend: LocalBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.create_server((LOOPBACK, 0)) as squatter:
        taken = squatter.getsockname()[1]
        offered = iter([taken, process.free_port()])
        monkeypatch.setattr(process, "free_port", lambda: next(offered))
        server = backend.start_postgres("retry")
        try:
            assert server.endpoint.port != taken
            assert server.admin.scalar("SELECT 1") == 1
            assert "could not bind" in Path(server.log_path).read_text()
        finally:
            server.stop()


def test_session_close_stops_everything_even_when_stops_fail(
    scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = PgtopoSession(PgtopoConfig(tmpdir=scratch))
    plain, bouncer, tls = (session.topology(name) for name in ("plain", "bouncer", "tls"))
    pids = plain.pids() + bouncer.pids() + tls.pids()
    real_stops = [plain.stop, tls.stop]

    def refuse(name: str) -> None:
        raise RuntimeError(f"{name} would not stop")

    monkeypatch.setattr(plain, "stop", lambda: refuse("plain"))
    monkeypatch.setattr(tls, "stop", lambda: refuse("tls"))
    try:
        with pytest.raises(ExceptionGroup) as info:
            session.close()
        assert sorted(str(e) for e in info.value.exceptions) == [
            "plain would not stop",
            "tls would not stop",
        ]
        assert bouncer.pids() == [], "the topology between the two failures was still stopped"
    finally:
        for stop in real_stops:
            stop()
    assert not any(_alive(pid) for pid in pids)
    assert list(scratch.iterdir()) == [], "the workspace went too"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
