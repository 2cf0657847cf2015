"""An egress monitor: every socket.connect() the process attempts, from any thread, seen
through Python's audit hooks (PEP 578) while a `watching()` block is open."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_lock = threading.Lock()
_recorders: list[list[tuple[str, int]]] = []
_installed = False


def _hook(event: str, args: tuple[Any, ...]) -> None:
    if event != "socket.connect" or not _recorders:
        return
    address = args[1]
    if isinstance(address, tuple) and len(address) >= 2:
        with _lock:
            for recorder in _recorders:
                recorder.append((str(address[0]), int(address[1])))


@contextmanager
def watching() -> Iterator[list[tuple[str, int]]]:
    """Yields the list of (host, port) connection attempts made while the block runs."""
    global _installed
    with _lock:
        if not _installed:
            sys.addaudithook(_hook)  # cannot be removed; idle while no block is open
            _installed = True
        attempts: list[tuple[str, int]] = []
        _recorders.append(attempts)
    try:
        yield attempts
    finally:
        with _lock:
            _recorders.remove(attempts)
