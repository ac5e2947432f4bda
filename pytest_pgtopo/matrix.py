"""The driver matrix: which drivers each engine test runs under, decided without pytest.

The plugin's hooks only translate between pytest and these functions, so every rule of the
matrix (defaults, what a driver can serve, the skip reason) is testable as plain calls.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from . import drivers
from .drivers import Kind
from .errors import PgtopoError

F = TypeVar("F", bound=Callable[..., object])


@dataclass(frozen=True)
class EngineFixture:
    """What an engine fixture needs from a driver."""

    kind: Kind
    multi_host: bool = False

    def served_by(self, driver: str) -> bool:
        return drivers.get(driver).refusal(self.kind, multi_host=self.multi_host) is None

    def describe(self) -> str:
        return f"{self.kind}{' multi-host' if self.multi_host else ''} engines"


ENGINE_FIXTURES: dict[str, EngineFixture] = {}
"""Engine fixture name -> its needs; filled by @engine_fixture as plugin.py defines them."""


def engine_fixture(kind: Kind, *, multi_host: bool = False) -> Callable[[F], F]:
    """Register the decorated function, under its own name, as an engine fixture.

    Apply it under @pytest.fixture so it sees the plain function (whose name is the fixture's)
    and hands it back unchanged for pytest to wrap.
    """

    def register(function: F) -> F:
        ENGINE_FIXTURES[function.__name__] = EngineFixture(kind, multi_host)
        return function

    return register


TOPOLOGY_FIXTURES: set[str] = set()
"""Fixtures that start a topology; filled by @topology_fixture as plugin.py defines them."""


def topology_fixture(function: F) -> F:
    """Register the decorated function, under its own name, as a fixture that starts servers:
    every test that needs it, directly or not, runs once per selected PostgreSQL version."""
    TOPOLOGY_FIXTURES.add(function.__name__)
    return function


def version_plan(majors: Sequence[int], fixturenames: Iterable[str]) -> list[int]:
    """The server-version axis: the majors a test runs on, or [] when it needs no
    parametrizing (it starts no topology, or one version is selected). An engine fixture
    starts its topology itself, after checking the driver, so it counts as one that starts."""
    names = set(fixturenames)
    if len(majors) < 2 or not (names & TOPOLOGY_FIXTURES or names & ENGINE_FIXTURES.keys()):
        return []
    return list(majors)


def version_id(major: int) -> str:
    return f"pg{major}"


def needs_of(fixturenames: Iterable[str]) -> set[EngineFixture]:
    """What the engine fixtures among `fixturenames` need; other fixtures need nothing."""
    return {ENGINE_FIXTURES[name] for name in fixturenames if name in ENGINE_FIXTURES}


def parse_driver_list(text: str) -> tuple[str, ...]:
    """'' -> () meaning per-fixture defaults; 'all' -> every installed driver; else a list."""
    text = text.strip()
    if not text:
        return ()
    if text == "all":
        found = tuple(drivers.installed())
        if not found:
            raise ValueError("'all' found no installed driver; pip install 'pytest-pgtopo[all]'")
        return found
    names = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    for name in names:
        if name not in drivers.DRIVERS:
            raise ValueError(
                f"unknown driver {name!r}; expected 'all' or names from: {', '.join(drivers.DRIVERS)}"
            )
        try:
            drivers.get(name).require_installed()
        except PgtopoError as exc:
            raise ValueError(str(exc)) from None
    return names


@dataclass(frozen=True)
class Plan:
    """How one test's `pgtopo_driver` is parametrized.

    No drivers: not at all (the fixture's default_driver picks). Drivers and no skip_reason:
    once per driver. Drivers and a skip_reason: once per driver, each skipped with that reason.
    """

    drivers: tuple[str, ...] = ()
    skip_reason: str | None = None


def plan(selected: Sequence[str], needs: Collection[EngineFixture]) -> Plan:
    """The driver axis for a test needing `needs`, given the drivers chosen by --pgtopo-driver."""
    if not needs or not selected:
        return Plan()  # No engine, or no choice made: the per-fixture default.
    usable = tuple(name for name in selected if _serves_all(name, needs))
    if len(selected) == 1 and usable:
        return Plan()  # One driver for everything: default_driver returns it, no test id noise.
    if usable:
        return Plan(usable)
    needed = " and ".join(sorted({need.describe() for need in needs}))
    able = [name for name in drivers.DRIVERS if _serves_all(name, needs)]
    reason = (
        f"pgtopo: no selected driver ({', '.join(selected)}) can back {needed}; "
        f"drivers that can: {', '.join(able)}"
    )
    # Skipped rather than dropped, so the run says why those tests did not run.
    return Plan(tuple(selected), skip_reason=reason)


def driver_problem(driver: str, fixturenames: Iterable[str]) -> str | None:
    """Why `driver` cannot serve the engine fixtures among `fixturenames`, or None if it can:
    the first one it cannot back, and the drivers that can back all of them. The plugin asks
    before any server starts, so a test that cannot run fails at once, and says so once.
    """
    names = [name for name in dict.fromkeys(fixturenames) if name in ENGINE_FIXTURES]
    if not names:
        return None
    try:
        spec = drivers.get(driver)
    except PgtopoError as exc:
        return str(exc)
    needs = {ENGINE_FIXTURES[name] for name in names}
    for name in names:
        need = ENGINE_FIXTURES[name]
        reason = spec.refusal(need.kind, multi_host=need.multi_host)
        if reason is None:
            continue
        able = ", ".join(d for d in drivers.DRIVERS if _serves_all(d, needs))
        if len(needs) == 1:
            return f"{reason} ({name}); use one of: {able}"
        if able:
            return f"{reason} ({name}); use one of: {able} (every engine fixture of this test)"
        return f"{reason} ({name}); no driver can back all of {', '.join(names)}: split the test"
    try:
        spec.require_installed()
    except PgtopoError as exc:
        return str(exc)
    return None


def default_driver(selected: Sequence[str], needs: Collection[EngineFixture]) -> str:
    """The driver when the matrix did not parametrize: the one selected, else asyncpg for tests
    with only async engines and psycopg (which serves both kinds) for the rest."""
    if len(selected) == 1:
        return selected[0]
    kinds = {need.kind for need in needs}
    return drivers.DEFAULT_DRIVER["async" if kinds == {"async"} else "sync"]


def _serves_all(driver: str, needs: Collection[EngineFixture]) -> bool:
    return all(need.served_by(driver) for need in needs)
