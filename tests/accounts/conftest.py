"""Fixtures of the accounts tests: a mail server user store run by the `command` backend."""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

SERVER = Path(__file__).with_name("mailbox_server.py")


@dataclass
class MailServer:
    """tests/accounts/mailbox_server.py with its state in `state` (see its docstring)."""

    state: Path

    def command(self, *, pause: str | None = None, marker: Path | None = None) -> str:
        argv = [sys.executable, str(SERVER), str(self.state)]
        if pause is not None:
            argv += ["--pause", pause, "--marker", str(marker)]
        return shlex.join(argv)

    def mailboxes(self) -> dict[str, Any]:
        if not self.state.exists():
            return {}
        boxes: dict[str, Any] = json.loads(self.state.read_text(encoding="utf-8"))
        return boxes

    def effects(self) -> list[str]:
        """Every change made, as "<action> <address>", in order."""
        log = self.state.with_suffix(".log")
        return log.read_text(encoding="utf-8").splitlines() if log.exists() else []

    def add(self, address: str, *, enabled: bool = True) -> None:
        """A mailbox made on the mail server by someone else (not through the portal)."""
        boxes = self.mailboxes()
        boxes[address] = {"hash": "{ARGON2ID}elsewhere", "enabled": enabled}
        self.state.write_text(json.dumps(boxes), encoding="utf-8")


@pytest.fixture
def mail_server(settings: Any, tmp_path: Path) -> MailServer:
    """MAILBOX_BACKEND=command, run against a fresh mailbox_server.py store."""
    server = MailServer(state=tmp_path / "mailboxes.json")
    settings.MAILBOX_BACKEND = "command"
    settings.MAILBOX_COMMAND = server.command()
    return server
