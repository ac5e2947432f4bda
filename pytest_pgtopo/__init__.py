"""pytest-pgtopo: real PostgreSQL topologies for tests, and engines built the production way.

Load the plugin with ``pytest -p pytest_pgtopo`` (or let its entry point load it). Outside
pytest, the recipes below build engines for any endpoint::

    from pytest_pgtopo import Endpoint, SessionSettings, create_async_engine
"""

from .drivers import ClientOptions
from .endpoint import Endpoint
from .errors import (
    BinaryNotFoundError,
    DriverNotInstalledError,
    DriverUnsupportedError,
    PgtopoError,
    PgtopoWarning,
    ServerStartError,
)
from .recipes.engines import create_async_engine, create_engine, engine_arguments
from .recipes.pooler import Pooler, durable_settings_sql
from .recipes.settings import SessionSettings
from .tls import TlsClient, TlsMode
from .topologies.bouncer import BouncerOptions
from .topologies.tls import TlsOptions

# Registered by `-p pytest_pgtopo`; importing the package outside pytest does not import pytest.
pytest_plugins = ["pytest_pgtopo.plugin"]

__all__ = [
    "BinaryNotFoundError",
    "BouncerOptions",
    "ClientOptions",
    "DriverNotInstalledError",
    "DriverUnsupportedError",
    "Endpoint",
    "PgtopoError",
    "PgtopoWarning",
    "Pooler",
    "ServerStartError",
    "SessionSettings",
    "TlsClient",
    "TlsMode",
    "TlsOptions",
    "create_async_engine",
    "create_engine",
    "durable_settings_sql",
    "engine_arguments",
]
