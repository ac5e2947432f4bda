"""The docker backend against a real Docker engine: readiness by a real login, nothing left
after a SIGKILL of pytest, and the bad inputs (no engine, an image without pgbouncer or
postgres, an image that does not exist and cannot be pulled, an unknown Debian suite).

Where no engine is reachable, or no image built by `pgtopo image build` is present, the tests
that need one skip and say exactly why; the bad-input tests that need no engine always run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from pytest_pgtopo.admin import AdminConnection
from pytest_pgtopo.backends.docker import DockerBackend
from pytest_pgtopo.cli import main as pgtopo
from pytest_pgtopo.docker import engine as docker_engine
from pytest_pgtopo.docker.containers import LABEL_RUN
from pytest_pgtopo.docker.images import REPOSITORY
from pytest_pgtopo.errors import PgtopoError
from pytest_pgtopo.topologies.bouncer import BouncerTopology
from pytest_pgtopo.topologies.plain import PlainTopology

from .support import wait_for

WITHIN = 10.0  # Seconds in which a killed run's containers must be gone.


@pytest.fixture(scope="module")
def engine() -> docker_engine.Engine:
    reason = docker_engine.unreachable_reason()
    if reason is not None:
        reason = reason.removeprefix("pytest-pgtopo: ")
        pytest.skip(f"no Docker engine to test the docker backend on: {reason}")
    return docker_engine.connect()


@pytest.fixture(scope="module")
def image(engine: docker_engine.Engine) -> str:
    """The image the run's docker backend uses: PGTOPO_DOCKER_IMAGE, else the newest
    pytest-pgtopo:pgNN present."""
    configured = os.environ.get("PGTOPO_DOCKER_IMAGE")
    if configured and "{major}" not in configured:
        return configured
    tags = sorted(
        (int(tag.split(":pg")[1]), tag)
        for found in engine.client.images.list(name=REPOSITORY)
        for tag in found.tags
        if tag.split(":pg")[-1].isdigit()
    )
    if not tags:
        pytest.skip(
            f"no {REPOSITORY}:pgNN image in the Docker engine at {engine.host}: "
            "build one with `pgtopo image build --debian bookworm`"
        )
    return tags[-1][1]


@pytest.fixture
def docker_backend(image: str) -> Iterator[DockerBackend]:
    backend = DockerBackend(image=image, image_source="test")
    yield backend
    backend.close()


def _containers_of(engine: docker_engine.Engine, run_id: str) -> list[Any]:
    return engine.client.containers.list(all=True, filters={"label": f"{LABEL_RUN}={run_id}"})


# --- readiness and credentials ------------------------------------------------------------------


def test_a_started_server_has_accepted_a_real_login_with_its_generated_password(
    engine: docker_engine.Engine, docker_backend: DockerBackend
) -> None:
    plain = PlainTopology.start(docker_backend)
    try:
        endpoint = plain.primary
        # start_postgres returned only after a password login worked: a new one works at once.
        fresh = AdminConnection(endpoint)
        try:
            assert fresh.scalar("SELECT current_user") == endpoint.user
            assert fresh.scalar("SHOW password_encryption") == "scram-sha-256"
            if docker_backend.network_mode == "host":
                assert fresh.scalar("SELECT inet_server_addr()::text") == "127.0.0.1/32"
        finally:
            fresh.close()
        assert len(endpoint.password) >= 24
        with pytest.raises(Exception, match="password authentication failed"):
            AdminConnection(dataclasses.replace(endpoint, password="wrong"))
        (container,) = _containers_of(engine, docker_backend.run_id)
        assert container.status == "running"
        assert container.attrs["Config"]["User"] == "postgres"
    finally:
        plain.stop()
    assert _containers_of(engine, docker_backend.run_id) == [], "stop() removed its container"


def test_the_report_header_names_docker_the_image_and_the_networking(
    docker_backend: DockerBackend,
) -> None:
    text = docker_backend.describe()
    assert "Docker" in text
    assert docker_backend.image in text
    assert f"{docker_backend.network_mode} networking" in text
    assert f"PostgreSQL {docker_backend.tools.postgres_version}" in text


def test_host_networking_binds_loopback_only(engine: docker_engine.Engine, image: str) -> None:
    if not engine.local:
        pytest.skip(
            f"host networking needs the engine on this machine; DOCKER_HOST is {engine.host}"
        )
    backend = DockerBackend(image=image, network="host", network_source="test")
    plain = PlainTopology.start(backend)
    try:
        assert plain.primary.host == "127.0.0.1"
        admin = plain.database_server.admin
        assert admin.scalar("SHOW listen_addresses") == "127.0.0.1"
    finally:
        plain.stop()
        backend.close()


def test_bridge_networking_publishes_on_loopback_only(
    engine: docker_engine.Engine, image: str
) -> None:
    """Each server's port is published on 127.0.0.1 only; PgBouncer reaches its server by
    container name on the run's own network, which goes with the run."""
    backend = DockerBackend(image=image, network="bridge", network_source="test")
    try:
        bouncer = BouncerTopology.start(backend)
    except PgtopoError as exc:
        backend.close()
        if "network" not in str(exc).lower():
            raise
        pytest.skip(f"the Docker engine at {engine.host} cannot make a bridge network: {exc}")
    try:
        containers = _containers_of(engine, backend.run_id)
        assert len(containers) == 2
        bindings = [
            binding
            for container in containers
            for port in container.attrs["NetworkSettings"]["Ports"].values()
            for binding in port or []
        ]
        assert len(bindings) == 2
        assert {binding["HostIp"] for binding in bindings} == {"127.0.0.1"}
        assert AdminConnection(bouncer.bouncer).scalar("SELECT 1") == 1
        network = backend._network_name
        assert network is not None
    finally:
        bouncer.stop()
        backend.close()
    assert _containers_of(engine, backend.run_id) == []
    assert engine.client.networks.list(names=[network]) == []


# --- nothing left after SIGKILL -----------------------------------------------------------------

HOLD = """
import json, os, time
from pathlib import Path

def test_holds(pg_bouncer, pg_plain):
    names = [c.name for c in __import__("docker").from_env().containers.list(
        filters={"label": "org.pytest-pgtopo.owner=" + os.environ["PGTOPO_RUN_OWNER"]})]
    Path("started.json").write_text(json.dumps(names))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        time.sleep(0.05)
"""


@pytest.mark.parametrize("how", ["SIGKILL", "SIGKILL of a background job"])
def test_kill_9_of_pytest_removes_every_container_within_seconds(
    inner: pytest.Pytester, engine: docker_engine.Engine, image: str, how: str
) -> None:
    inner.makepyfile(HOLD)
    started = inner.path / "started.json"

    def as_background_job() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGQUIT, signal.SIG_IGN)

    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "pytest_pgtopo", "-q", "--pgtopo-backend=docker"],
        cwd=inner.path,
        env={**os.environ, "PGTOPO_DOCKER_IMAGE": image},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=as_background_job if how != "SIGKILL" else None,
    )
    try:
        wait_for(started.exists, "the inner run to hold its containers", 180)
        names = json.loads(started.read_text())
        assert len(names) == 3, "PgBouncer, its server and pg_plain's server"
        start = time.monotonic()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)

        def gone() -> bool:
            # The low-level list: containers.list() inspects each one, and fails on one
            # removed meanwhile, which is what is happening here.
            listed = engine.client.api.containers(all=True)
            present = {name.lstrip("/") for c in listed for name in c["Names"]}
            return not present.intersection(names)

        wait_for(gone, "every container of the killed run to be removed", 60)
        assert time.monotonic() - start < WITHIN
    finally:
        proc.kill()


# --- bad input ------------------------------------------------------------------------------------


def test_no_engine_reachable_is_a_usage_error_saying_how_to_start_one(
    inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{inner.path}/no-engine.sock")
    inner.makepyfile("def test_x(pg_plain): pass")
    result = inner.runpytest_subprocess("--pgtopo-backend=docker")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    if not docker_engine.testcontainers_installed():  # tox envs without the docker extra
        assert "--pgtopo-backend=docker: the docker backend needs testcontainers: " in err
        assert "pip install 'pytest-pgtopo[docker]'" in err
        return
    assert f"--pgtopo-backend=docker: no Docker engine is reachable at unix://{inner.path}" in err
    assert "point DOCKER_HOST at a running engine" in err
    assert "dockerd" in err


def _variant(engine: docker_engine.Engine, image: str, remove: str, tag: str) -> str:
    """`image` with `remove` deleted, committed as `tag` (a layer on top: quick)."""
    container = engine.client.containers.run(
        image, ["/bin/sh", "-c", f"rm -rf {remove}"], user="root", detach=True, network_mode="none"
    )
    try:
        container.wait(timeout=60)
        container.commit(repository=tag.split(":")[0], tag=tag.split(":")[1])
    finally:
        container.remove(force=True)
    return tag


@pytest.fixture(scope="module")
def without_pgbouncer(engine: docker_engine.Engine, image: str) -> Iterator[str]:
    tag = _variant(
        engine, image, "/usr/sbin/pgbouncer /usr/bin/pgbouncer", "pgtopo-test-nobouncer:1"
    )
    yield tag
    with contextlib.suppress(Exception):
        engine.client.images.remove(tag, force=True)


@pytest.fixture(scope="module")
def without_postgres(engine: docker_engine.Engine, image: str) -> Iterator[str]:
    tag = _variant(engine, image, "/usr/lib/postgresql", "pgtopo-test-nopostgres:1")
    yield tag
    with contextlib.suppress(Exception):
        engine.client.images.remove(tag, force=True)


def test_an_image_without_pgbouncer_fails_the_bouncer_topology_clearly_and_leaves_nothing(
    engine: docker_engine.Engine, without_pgbouncer: str
) -> None:
    backend = DockerBackend(image=without_pgbouncer, image_source="--pgtopo-docker-image")
    try:
        with pytest.raises(PgtopoError) as caught:
            BouncerTopology.start(backend)
        message = str(caught.value)
        assert f"image {without_pgbouncer} (--pgtopo-docker-image) has no pgbouncer" in message
        assert "pgtopo image build" in message
        # pg_plain still works on it.
        plain = PlainTopology.start(backend)
        plain.stop()
    finally:
        backend.close()
    assert _containers_of(engine, backend.run_id) == []


def test_an_image_without_postgres_fails_clearly_and_leaves_nothing(
    engine: docker_engine.Engine, without_postgres: str
) -> None:
    backend = DockerBackend(image=without_postgres, image_source="env PGTOPO_DOCKER_IMAGE")
    try:
        with pytest.raises(PgtopoError) as caught:
            PlainTopology.start(backend)
    finally:
        backend.close()
    message = str(caught.value)
    assert f"image {without_postgres} (env PGTOPO_DOCKER_IMAGE) lacks PostgreSQL" in message
    assert "pgtopo image build --debian bookworm" in message
    assert _containers_of(engine, backend.run_id) == []


def test_an_image_that_is_not_there_and_cannot_be_pulled_fails_clearly(
    engine: docker_engine.Engine,
) -> None:
    missing = "pgtopo-test-no-such-image:0"
    backend = DockerBackend(image=missing, image_source="ini pgtopo_docker_image")
    try:
        with pytest.raises(PgtopoError) as caught:
            PlainTopology.start(backend)
    finally:
        backend.close()
    message = str(caught.value)
    assert f"image {missing} (ini pgtopo_docker_image) is not in the Docker engine" in message
    assert "pulling it failed" in message
    assert "pgtopo image build --debian bookworm|trixie" in message
    assert _containers_of(engine, backend.run_id) == []


def test_an_unknown_debian_suite_is_refused_before_anything_runs(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert pgtopo(["image", "build", "--debian", "sid"]) == 2
    err = capsys.readouterr().err
    assert "pgtopo: unknown Debian suite 'sid' for --debian; choose one of: bookworm, trixie" in err
    assert "bookworm: PostgreSQL 15 + PgBouncer 1.18; trixie: PostgreSQL 17 + PgBouncer 1.24" in err


def test_docker_with_pg_version_all_is_a_usage_error(inner: pytest.Pytester) -> None:
    inner.makepyfile("def test_x(pg_plain): pass")
    result = inner.runpytest_subprocess("--pgtopo-backend=docker", "--pgtopo-pg-version=all")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "with --pgtopo-backend=docker name the majors (NN[,NN...])" in result.stderr.str()


# --- auto -----------------------------------------------------------------------------------------


def test_auto_without_local_postgresql_runs_on_a_reachable_engine_and_says_so(
    inner: pytest.Pytester,
    engine: docker_engine.Engine,
    image: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from .test_messages import _run_without_postgresql

    monkeypatch.setenv("PGTOPO_DOCKER_IMAGE", image)
    inner.makepyfile("def test_needs_a_server(pg_plain):\n    assert pg_plain.primary.port\n")
    output = _run_without_postgresql(inner, docker_host=engine.host)
    header = next(line for line in output.splitlines() if line.startswith("pgtopo: "))
    assert header.startswith("pgtopo: backend=auto (Docker), PostgreSQL "), header
    assert f"in image {image} (Docker " in header
    assert "1 passed" in output, output
