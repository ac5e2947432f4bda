"""Waiting on real conditions: poll fast at first, back off, give up at a deadline."""

from __future__ import annotations

import time
from collections.abc import Callable

from .errors import PgtopoError


def wait_until(
    ready: Callable[[], bool],
    *,
    timeout: float,
    explain: Callable[[], str],
    first: float = 0.005,
    longest: float = 0.1,
) -> None:
    """Call `ready()` until it is true; after `timeout` seconds raise PgtopoError(explain()).

    The first checks are `first` seconds apart (most conditions here hold within ~50 ms),
    then the interval grows by half each time up to `longest`.
    """
    deadline, interval = time.monotonic() + timeout, first
    while not ready():
        if time.monotonic() > deadline:
            raise PgtopoError(explain())
        time.sleep(interval)
        interval = min(interval * 1.5, longest)
