"""`pgtopo image build`: an image for the docker backend from Debian's packages alone.

debootstrap a minimal Debian suite from the mirror this machine's apt uses, install
postgresql-NN and pgbouncer in it, `docker import` the tarball: no image registry needed.
bookworm gives PostgreSQL 15 + PgBouncer 1.18, trixie PostgreSQL 17 + PgBouncer 1.24.
"""

from __future__ import annotations

import argparse
import sys
import time

from ..docker import images
from ..docker.engine import DockerUnavailableError, connect
from ..errors import PgtopoError
from .common import PROG, _message


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    image = commands.add_parser(
        "image",
        help="build an image for --pgtopo-backend=docker",
        description="Images for the docker backend.",
    )
    actions = image.add_subparsers(dest="image_command", required=True, metavar="ACTION")
    build = actions.add_parser(
        "build",
        help="build PostgreSQL + PgBouncer from Debian's packages, no registry needed",
        description="debootstrap a minimal Debian (from the mirror in /etc/apt), install "
        "postgresql-NN and pgbouncer, and docker import it. bookworm: PostgreSQL 15 + "
        "PgBouncer 1.18; trixie: PostgreSQL 17 + PgBouncer 1.24. Needs root, debootstrap and "
        "a Docker engine (DOCKER_HOST). The root filesystem is cached (PGTOPO_IMAGE_CACHE, "
        "default /var/cache/pytest-pgtopo/images as root), so a rebuild is an import.",
    )
    build.add_argument(
        "--debian",
        default="bookworm",
        metavar="SUITE",
        help=f"the Debian suite: {', '.join(images.SUITES)} (default: bookworm)",
    )
    build.add_argument(
        "--tag",
        action="append",
        metavar="NAME",
        help="the image name (repeat for more); default pytest-pgtopo:pgNN and "
        "pytest-pgtopo:SUITE, which the docker backend's default image pytest-pgtopo:pg{major} finds",
    )
    build.add_argument(
        "--rebuild", action="store_true", help="build again even if a cached root filesystem exists"
    )
    build.add_argument(
        "--dockerfile",
        action="store_true",
        help="print an equivalent Dockerfile instead (for machines with a registry but no "
        "debootstrap: pipe it to `docker build -t pytest-pgtopo:pgNN -`)",
    )
    build.set_defaults(run=_build)


def _build(args: argparse.Namespace) -> int:
    try:
        suite = images.suite(args.debian)
    except PgtopoError as exc:
        print(_message(exc), file=sys.stderr)
        return 2
    if args.dockerfile:
        print(images.dockerfile(suite), end="")
        return 0
    started = time.monotonic()

    def say(text: str) -> None:
        print(f"{PROG} image build: {text}", file=sys.stderr, flush=True)

    try:
        engine = connect()
        built = images.build(engine.client, suite.name, args.tag, rebuild=args.rebuild, say=say)
    except DockerUnavailableError as exc:
        print(_message(exc), file=sys.stderr)
        return 1
    except PgtopoError as exc:
        print(_message(exc), file=sys.stderr)
        return 1
    print(
        f"{', '.join(built.tags)}: PostgreSQL {built.postgres} + PgBouncer {built.pgbouncer} "
        f"(Debian {suite.name}, {built.image_id[:19]}, "
        f"{'from the cache' if built.from_cache else 'built'} in {time.monotonic() - started:.0f} s)"
    )
    return 0
