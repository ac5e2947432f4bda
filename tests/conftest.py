"""Fixtures shared by the plugin's tests that drive servers directly, below the pytest layer."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_pgtopo.backends.local import LocalBackend


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A directory the server user can enter (pytest's own tmp_path is 0700 root-only)."""
    path = Path(tempfile.mkdtemp(prefix="pgtopo-test-", dir="/dev/shm"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def backend(scratch: Path) -> Iterator[LocalBackend]:
    """A local backend of its own, independent of the session's servers."""
    backend = LocalBackend(pg_bindir=None, pg_bindir_source="default", tmp_root=scratch, keep=False)
    yield backend
    backend.close()
