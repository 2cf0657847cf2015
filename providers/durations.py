"""Durations as administrators write them: `30m`, `12h`, `7d`, `2w`, `1y`, `never` (specs/qr.md)."""

from __future__ import annotations

import re
from datetime import timedelta

NEVER = "never"
# Longest first when formatting; a year is 365 days (mailadm's reading too).
_UNITS = {
    "y": timedelta(days=365),
    "w": timedelta(weeks=1),
    "d": timedelta(days=1),
    "h": timedelta(hours=1),
    "m": timedelta(minutes=1),
}
_PATTERN = re.compile(r"^(\d{1,6})\s*([ywdhm])$")
# Far enough for any sensible token or account, near enough that date arithmetic never
# overflows (datetime.max is year 9999).
LONGEST = timedelta(days=100 * 365)


class DurationError(ValueError):
    """Text that is not a duration; the message says how to write one."""


def parse(text: str) -> timedelta | None:
    """`7d` -> 7 days; `never` -> None. Raises DurationError for anything else."""
    value = text.strip().lower()
    if value == NEVER:
        return None
    match = _PATTERN.match(value)
    if not match:
        raise DurationError(
            f"{text!r} is not a duration: write a number and a unit, e.g. 30m, 12h, 7d, 2w, "
            "1y, or 'never'."
        )
    duration = int(match.group(1)) * _UNITS[match.group(2)]
    if not duration:
        raise DurationError("A duration must be longer than zero (or 'never').")
    if duration > LONGEST:
        raise DurationError("A duration can be at most 100 years (or 'never').")
    return duration


def format_duration(duration: timedelta | None) -> str:
    """The shortest exact text for `duration` (`2w`, not `14d`); None -> `never`."""
    if duration is None:
        return NEVER
    for unit, size in _UNITS.items():
        if duration >= size and duration % size == timedelta(0):
            return f"{duration // size}{unit}"
    minutes = max(1, round(duration / _UNITS["m"]))
    return f"{minutes}m"
