"""Schemathesis hooks of tests/e2e/test_api_fuzz.py (loaded by `st run` via SCHEMATHESIS_HOOKS).

Every request comes through the portal's trusted proxy from a client address of its own
(198.18.0.0/15, the benchmarking range), so that the per-address rate limits do not turn
most generated cases into 429s that never reach the code behind them. The limits themselves
are proved elsewhere (RELIABILITY.md checks 10, 11, 13).
"""

from __future__ import annotations

import itertools
from typing import Any

import schemathesis

_addresses = (f"198.{18 + n // 65536 % 2}.{n // 256 % 256}.{n % 256}" for n in itertools.count(1))


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    case.headers = {**(case.headers or {}), "X-Forwarded-For": next(_addresses)}
