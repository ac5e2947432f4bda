"""Docker benchmark: bring-up of each topology on the docker backend next to the local backend.

Run from the repository root:  python bench/docker.py [--repeat N] [--image NAME] [--network MODE]

For each topology (plain, bouncer, tls, replica) it times start (until the topology's first
login worked) and stop, on both backends, interleaved in alternating order so that machine
noise hits both alike, and prints medians and the docker/local ratio per topology, all from
this one run. Needs a Docker engine (DOCKER_HOST) and an image from `pgtopo image build`; it
says so and exits 0 without one. It always exits 0: a report, not a gate.
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

# `python bench/docker.py` puts bench/ first on sys.path, where this file would shadow docker-py
# (`import docker`). Import the real one first, with bench/ out of the way, then put bench/ back.
_BENCH = Path(__file__).resolve().parent
_saved = sys.path[:]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _BENCH]
with contextlib.suppress(ImportError):  # Not installed: the script says so below.
    import docker  # noqa: F401
sys.path[:] = _saved

from pytest_pgtopo.backends.docker import DockerBackend  # noqa: E402
from pytest_pgtopo.docker.engine import unreachable_reason  # noqa: E402
from pytest_pgtopo.errors import PgtopoError  # noqa: E402
from pytest_pgtopo.session import TOPOLOGY_STARTERS  # noqa: E402

# isort: split
# bench/common.py: `python bench/<name>.py` puts bench/ on sys.path, so it imports as `common`.
import common  # noqa: E402

TOPOLOGIES = ("plain", "bouncer", "tls", "replica")


def main() -> int:
    parser = common.arg_parser(
        __doc__ or "", repeat=3, repeat_help="bring-ups per topology and backend"
    )
    parser.add_argument(
        "--image", default="", help="docker image (default pytest-pgtopo:pg{major})"
    )
    parser.add_argument("--network", default="auto", choices=("auto", "host", "bridge"))
    args = parser.parse_args()
    reason = unreachable_reason()
    if reason is not None:
        print(f"docker benchmark skipped: {reason}")
        return 0
    with common.scratch_dir() as root:
        major = common.local_backend(root).binaries.major
    # The same PostgreSQL major on both sides (the default image is per major).
    docker = DockerBackend(
        image=args.image, image_source="--image", major=major, network=args.network
    )
    try:
        print(docker.describe())
    except PgtopoError as exc:
        print(f"docker benchmark skipped: {exc}")
        return 0
    up: dict[str, dict[str, list[float]]] = {t: {"docker": [], "local": []} for t in TOPOLOGIES}
    down: dict[str, dict[str, list[float]]] = {t: {"docker": [], "local": []} for t in TOPOLOGIES}
    with common.scratch_dir() as root:
        local = common.local_backend(root)
        backends = {"docker": docker, "local": local}
        try:
            # One untimed local start first: the initdb cache is the local backend's steady state.
            TOPOLOGY_STARTERS["plain"](local).stop()
            for round_number in range(args.repeat):
                for topology in TOPOLOGIES:
                    order = ("docker", "local") if round_number % 2 == 0 else ("local", "docker")
                    for name in order:
                        start = time.perf_counter()
                        running = TOPOLOGY_STARTERS[topology](backends[name])
                        up[topology][name].append(common.ms_since(start))
                        down[topology][name].append(common.timed(running.stop))
        finally:
            docker.close()
            local.close()
    rows = [
        (f"{topology} {what} {name}", samples[topology][name])
        for topology in TOPOLOGIES
        for what, samples in (("start", up), ("stop", down))
        for name in ("local", "docker")
    ]
    common.report("topology / step / backend", rows, digits=0)
    for topology in TOPOLOGIES:
        ratio = common.median_ratio(up[topology]["docker"], up[topology]["local"])
        print(
            common.info(
                f"{topology} bring-up docker/local", ratio, f", {docker.network_mode} networking"
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
