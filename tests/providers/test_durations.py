"""Durations as written in admin, on the command line and in exports (specs/qr.md)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from providers import durations


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("30m", timedelta(minutes=30)),
        ("12h", timedelta(hours=12)),
        ("7d", timedelta(days=7)),
        ("2w", timedelta(weeks=2)),
        ("1y", timedelta(days=365)),
        (" 7D ", timedelta(days=7)),
        ("never", None),
        ("NEVER", None),
    ],
)
def test_parse_reads_each_unit(text: str, value: timedelta | None) -> None:
    assert durations.parse(text) == value


@pytest.mark.parametrize("text", ["", "7", "d", "7x", "-1d", "0d", "1.5h", "101y", "7 days"])
def test_parse_refuses_anything_else_with_a_hint(text: str) -> None:
    with pytest.raises(durations.DurationError):
        durations.parse(text)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, "never"),
        (timedelta(days=14), "2w"),
        (timedelta(days=365), "1y"),
        (timedelta(hours=36), "36h"),
        (timedelta(minutes=90), "90m"),
        (timedelta(seconds=30), "1m"),
    ],
)
def test_format_writes_the_shortest_exact_text(value: timedelta | None, text: str) -> None:
    assert durations.format_duration(value) == text
    if value is None or value % timedelta(minutes=1) == timedelta(0):
        assert durations.parse(text) == value
