"""The `pgtopo` command: the plugin's topologies without pytest.

`pgtopo up [plain|bouncer|tls|replica|ha]` starts one with the local backend, prints how every
driver reaches it and keeps it running until Ctrl-C (SIGINT), SIGTERM or SIGHUP; then it stops
every server and removes its files. `pgtopo doctor` says what this machine can run and, for what
is missing, the command that installs it. `pgtopo image build [--debian bookworm|trixie]` builds
an image for the docker backend from Debian's packages, with no registry.

It uses the plugin's own layers (config -> session -> topology -> backend) and never imports
pytest (`lint-imports` checks it). Settings come from the options below, else from the plugin's
environment variables (PGTOPO_PG_BINDIR, PGTOPO_PG_VERSION, PGTOPO_PGBOUNCER_BIN, PGTOPO_TMPDIR).
"""

from __future__ import annotations

import argparse
import re
import signal
import sys
from collections.abc import Sequence

from .. import drivers
from ..errors import ConfigError
from .common import EXIT_USAGE, PROG, TOPOLOGIES, _message
from .doctor import _doctor
from .image import add_parser as add_image_parser
from .up import _up


def main(argv: Sequence[str] | None = None) -> int:
    """The console script `pgtopo`; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        status: int = args.run(args)
    except ConfigError as exc:
        print(_message(exc), file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # `doctor` interrupted: no traceback for that.
        return 128 + signal.SIGINT
    return status


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Real PostgreSQL topologies (pytest-pgtopo) outside pytest.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    up = commands.add_parser(
        "up",
        help="start a topology and keep it running until Ctrl-C or SIGTERM",
        description="Start a topology with the local backend, print how each driver reaches "
        "it, and keep it running until Ctrl-C (SIGINT), SIGTERM or SIGHUP; then stop every "
        "server and remove its files.",
    )
    up.add_argument(
        "topology",
        nargs="?",
        default="plain",
        choices=TOPOLOGIES,
        help="what to start (default: plain)",
    )
    up.add_argument(
        "--json",
        action="store_true",
        help="print one JSON document (topology, endpoints by role, per driver url and "
        "connect_args) instead of text",
    )
    up.add_argument(
        "--pg-version",
        type=_one_major,
        metavar="NN",
        help="the PostgreSQL major to run (default: PGTOPO_PG_VERSION, else the newest found)",
    )
    up.add_argument(
        "--driver",
        action="append",
        type=_driver_names,
        metavar="NAME",
        help=f"only these drivers ({', '.join(drivers.DRIVERS)}; repeat it or separate with "
        "commas; default: every installed one)",
    )
    up.set_defaults(run=_up)
    doctor = commands.add_parser(
        "doctor",
        help="say what this machine can run, and how to install what is missing",
        description="List the PostgreSQL builds, PgBouncer, the servers' OS user, the temp dir, "
        "backends and drivers; exit 0 when the default topologies (plain, bouncer, tls) can "
        "run, 1 otherwise, saying which cannot and why.",
    )
    doctor.set_defaults(run=_doctor)
    add_image_parser(commands)
    return parser


def _one_major(text: str) -> str:
    if not re.fullmatch(r"[0-9]+", text.strip()):
        raise argparse.ArgumentTypeError(
            f"expected one PostgreSQL major version, e.g. 16: {text!r}"
        )
    return text.strip()


def _driver_names(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    for name in names:
        if name not in drivers.DRIVERS:
            raise argparse.ArgumentTypeError(
                f"unknown driver {name!r}; choose from {', '.join(drivers.DRIVERS)}"
            )
    return names
