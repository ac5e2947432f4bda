"""pytest-pgtopo: real PostgreSQL topologies for tests, and engines built the production way.

Load the plugin with ``pytest -p pytest_pgtopo`` (or let its entry point load it). Outside
pytest, the recipes below build engines for any endpoint::

    from pytest_pgtopo import Endpoint, SessionSettings, create_async_engine
"""

from .audit import Finding, Target, audit_async_engine, audit_engine
from .credentials import TokenIssuer
from .drivers import ClientOptions
from .endpoint import Endpoint, MultiHostEndpoint
from .errors import (
    BinaryNotFoundError,
    DriverNotInstalledError,
    DriverUnsupportedError,
    PgtopoAuditError,
    PgtopoError,
    PgtopoWarning,
    ServerStartError,
    TopologyUnavailableError,
)
from .loadprobe import Failure, LoadProbe, LoadProbeError, ProbeReport
from .recipes.engines import create_async_engine, create_engine, engine_arguments
from .recipes.iam import fresh_token_on_connect
from .recipes.pool_metrics import register_pool_gauges
from .recipes.pooler import PgBouncerPooler, Pooler, durable_settings_sql
from .recipes.settings import SessionSettings
from .recipes.tenancy import search_path_on_connect, search_path_value, tenant
from .recipes.transaction_settings import aset_local, set_local
from .schema_cache import KeyedSchema, cached_schema
from .tls import TlsClient, TlsMode
from .topologies.bouncer import BouncerOptions, BouncerTopology
from .topologies.ha import HaTopology
from .topologies.plain import PlainTopology
from .topologies.replica import ReplicaTopology
from .topologies.tls import TlsOptions, TlsTopology
from .types import IsolationMode, SchemaSource

# Registered by `-p pytest_pgtopo`; importing the package outside pytest does not import pytest.
pytest_plugins = ["pytest_pgtopo.plugin"]

__all__ = [
    "BinaryNotFoundError",
    "BouncerOptions",
    "BouncerTopology",
    "ClientOptions",
    "DriverNotInstalledError",
    "DriverUnsupportedError",
    "Endpoint",
    "Failure",
    "Finding",
    "HaTopology",
    "IsolationMode",
    "KeyedSchema",
    "LoadProbe",
    "LoadProbeError",
    "MultiHostEndpoint",
    "PgBouncerPooler",
    "PgtopoAuditError",
    "PgtopoError",
    "PgtopoWarning",
    "PlainTopology",
    "Pooler",
    "ProbeReport",
    "ReplicaTopology",
    "SchemaSource",
    "ServerStartError",
    "SessionSettings",
    "Target",
    "TlsClient",
    "TlsMode",
    "TlsOptions",
    "TlsTopology",
    "TokenIssuer",
    "TopologyUnavailableError",
    "aset_local",
    "audit_async_engine",
    "audit_engine",
    "cached_schema",
    "create_async_engine",
    "create_engine",
    "durable_settings_sql",
    "engine_arguments",
    "fresh_token_on_connect",
    "register_pool_gauges",
    "search_path_on_connect",
    "search_path_value",
    "set_local",
    "tenant",
]
