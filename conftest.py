"""Root conftest: shared helpers for the plugin's own tests.

The plugin itself is loaded with `-p pytest_pgtopo` from pyproject's addopts, as a downstream
suite would load it. Tests that run an inner pytest take the `inner` fixture below: a
pytester with no PGTOPO_* variable from the outer environment.
"""

from __future__ import annotations

import importlib
import os

import pytest

from pytest_pgtopo import drivers

pytest_plugins = ["pytester"]

# In-process pytester runs drop the modules an inner run imported; importing a C-extension
# driver again in the same process crashes (asyncpg's protocol segfaults). Import them once here.
for _name in drivers.installed():
    importlib.import_module(drivers.get(_name).module)

INNER_INI = """
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
"""


@pytest.fixture
def inner(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A pytester whose inner runs see no PGTOPO_* variable from the outer environment."""
    for name in list(os.environ):
        if name.startswith("PGTOPO_"):
            monkeypatch.delenv(name)
    pytester.makefile(".ini", pytest=INNER_INI)
    return pytester
