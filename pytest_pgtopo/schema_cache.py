"""Loaded schemas kept across runs: a `pg_dump` of each loaded template, keyed by what made it.

Real suites load their schema with migrations that take seconds. The first run that loads a
schema dumps the template (custom format); every later load of the same schema on the same
server version, in this run's other xdist workers or in later runs, restores the dump instead.

The key is the server's version, pg_dump's version and a fingerprint of the schema source:
- a MetaData: the DDL it emits for PostgreSQL (tables, types, indexes, DDL events);
- a .sql file: its contents;
- a callable (an Alembic upgrade, say): only with a key the user gives, via `cached_schema()`;
  a bare callable cannot be fingerprinted and is loaded every time.
A changed source is a new key, so a stale template is never served. One file lock per key
makes concurrent loaders (xdist workers, parallel runs) wait for the first instead of loading
too. A failed load caches nothing; a dump that cannot be restored is replaced by a fresh load.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import subprocess
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import sqlalchemy

from .endpoint import Endpoint
from .errors import ConfigError, PgtopoError, PgtopoWarning
from .servers.binaries import PgBinaries
from .types import DatabaseServer, SchemaSource

FORMAT = "1"  # Bumped when what a cache entry holds, or how it is named, changes.
Outcome = Literal["loaded", "restored", "uncached"]


@dataclass(frozen=True)
class KeyedSchema:
    """A schema callable with a cache key: see `cached_schema`."""

    load: Callable[[sqlalchemy.Engine], Any]
    key: str

    def __call__(self, engine: sqlalchemy.Engine) -> Any:
        return self.load(engine)


def cached_schema(load: Callable[[sqlalchemy.Engine], Any], *, key: str) -> KeyedSchema:
    """Mark a schema callable as cacheable across runs under `key`.

    Return it from `pgtopo_schema`. The key must change whenever what `load` builds changes:
    for Alembic, the head revision(s) plus a hash of the versions directory is a good key.

    >>> cached_schema(lambda engine: None, key="alembic:ae1027a6acf").key
    'alembic:ae1027a6acf'
    """
    if not isinstance(key, str) or not key:
        raise PgtopoError(f"cached_schema(key={key!r}): the key must be a non-empty string")
    return KeyedSchema(load, key)


def fingerprint(schema: SchemaSource) -> str | None:
    """What identifies `schema`'s contents; None when it cannot be cached (None, a bare callable).

    >>> fingerprint(cached_schema(print, key="v1")) == fingerprint(cached_schema(len, key="v1"))
    True
    >>> fingerprint(lambda engine: None) is None
    True
    """
    if schema is None:
        return None
    if isinstance(schema, KeyedSchema):
        return "key:" + _digest(schema.key.encode())
    if isinstance(schema, sqlalchemy.MetaData):
        return "metadata:" + _digest("\n;\n".join(_metadata_ddl(schema)).encode())
    if isinstance(schema, (str, os.PathLike)):
        return "sql:" + _digest(Path(schema).read_bytes())
    return None


def _metadata_ddl(metadata: sqlalchemy.MetaData) -> list[str]:
    """Every statement create_all() would send to PostgreSQL, without a server."""
    statements: list[str] = []

    def record(sql: Any, *args: Any, **kwargs: Any) -> None:
        statements.append(str(sql.compile(dialect=engine.dialect)).strip())

    engine = sqlalchemy.create_mock_engine("postgresql://", record)
    metadata.create_all(engine, checkfirst=False)
    return statements


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class SchemaCache:
    """Dumps of loaded templates under `root`, restored with the client tools `tools_for(major)`
    gives (pg_dump and pg_restore at least as new as the server; None disables the cache for
    that server)."""

    def __init__(self, root: Path, tools_for: Callable[[int], PgBinaries | None]) -> None:
        self.root = root
        self._tools_for = tools_for

    def check(self) -> None:
        """Raise ConfigError, at start-up, if the cache directory cannot be written."""
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            probe = self.root / f".probe-{os.getpid()}"
            probe.touch()
            probe.unlink()
        except OSError as exc:
            raise ConfigError(_unwritable(self.root, exc)) from None

    def fill(
        self, schema: SchemaSource, server: DatabaseServer, dbname: str, load: Callable[[], None]
    ) -> Outcome:
        """Put `schema` into the empty database `dbname`: restored from the cache if there, else
        by `load()` and then dumped for next time."""
        digest = fingerprint(schema)
        tools = self._tools_for(int(server.admin.scalar("SHOW server_version_num")) // 10000)
        if digest is None or tools is None:
            load()
            return "uncached"
        version = str(server.admin.scalar("SHOW server_version"))
        key = _digest("\n".join([FORMAT, version, tools.version, digest]).encode())[:24]
        entry = self.root / f"pg{tools.major}-{key}.dump"
        with self._locked(entry):
            endpoint = server.endpoint.with_dbname(dbname)
            if entry.is_file():
                problem = _restore(tools, entry, endpoint)
                if problem is None:
                    return "restored"
                warnings.warn(
                    PgtopoWarning(
                        f"schema cache entry {entry} could not be restored, loading "
                        f"the schema instead: {problem}"
                    ),
                    stacklevel=2,
                )
            load()  # Raises SchemaLoadError: then nothing is written.
            _dump(tools, endpoint, entry)
            return "loaded"

    @contextlib.contextmanager
    def _locked(self, entry: Path) -> Iterator[None]:
        """Hold the entry's lock file: the first process loads, the others wait and restore."""
        lock_path = entry.with_suffix(".lock")
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise PgtopoError(_unwritable(self.root, exc)) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # Closing releases the lock.


def _unwritable(root: Path, exc: OSError) -> str:
    return (
        f"pytest-pgtopo: the schema cache directory {root} is not writable ({exc.strerror}); "
        "point --pgtopo-schema-cache-dir (ini pgtopo_schema_cache_dir, env "
        "PGTOPO_SCHEMA_CACHE_DIR) at a writable directory, or turn the cache off with "
        "--pgtopo-schema-cache=off (ini pgtopo_schema_cache, env PGTOPO_SCHEMA_CACHE)"
    )


def _libpq_env(endpoint: Endpoint) -> dict[str, str]:
    """The environment pg_dump and pg_restore connect with: libpq's variables for `endpoint`
    (the password stays out of the command line)."""
    names = {
        "host": "PGHOST", "port": "PGPORT", "user": "PGUSER", "password": "PGPASSWORD",
        "dbname": "PGDATABASE", "sslmode": "PGSSLMODE", "sslrootcert": "PGSSLROOTCERT",
        "sslcert": "PGSSLCERT", "sslkey": "PGSSLKEY", "sslnegotiation": "PGSSLNEGOTIATION",
    }  # fmt: skip
    kwargs = endpoint.dbapi_kwargs("psycopg2")  # libpq's own keywords.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update({names[k]: str(v) for k, v in kwargs.items() if k in names and v is not None})
    return env


def _dump(tools: PgBinaries, endpoint: Endpoint, entry: Path) -> None:
    """Write the dump next to `entry` and rename it into place, so no reader sees half a file.
    A dump that fails costs the next run a load, not this run its tests: a warning."""
    partial = entry.with_suffix(f".{os.getpid()}.partial")
    result = subprocess.run(
        [tools["pg_dump"], "--format=custom", "--no-owner", f"--file={partial}"],
        env=_libpq_env(endpoint),
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        warnings.warn(
            PgtopoWarning(f"could not cache the loaded schema: pg_dump: {result.stderr.strip()}"),
            stacklevel=3,
        )
        return
    partial.replace(entry)


def _restore(tools: PgBinaries, entry: Path, endpoint: Endpoint) -> str | None:
    """Restore `entry` into the empty database `endpoint` names, all or nothing; None if it
    worked, else pg_restore's complaint (the database is left empty)."""
    result = subprocess.run(
        [tools["pg_restore"], "--no-owner", "--single-transaction", "--exit-on-error",
         f"--dbname={endpoint.dbname}", str(entry)],
        env=_libpq_env(endpoint),
        capture_output=True,
        text=True,
    )  # fmt: skip
    return None if result.returncode == 0 else result.stderr.strip()
