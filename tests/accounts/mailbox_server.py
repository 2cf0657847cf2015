"""A mail server's user store for the `command` backend's tests: a program, not a mock.

Run as MAILBOX_COMMAND (`python mailbox_server.py STATE [--pause WHEN --marker FILE]`), it
keeps mailboxes in the JSON file STATE and follows the backend contract of
accounts/mailbox/base.py exactly as an operator's script must: `create` refuses an address
that exists, `delete` of an absent one succeeds, `list` prints the mailboxes of the asked
domains. Each effect is also appended to STATE.log, so a test can count them.

`--pause before-create` / `after-create` writes MARKER and sleeps at that point of a
create, so a test can kill the portal process there (RELIABILITY.md check 5). It pauses
once: while MARKER exists, creates run through.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import sys
import time
from pathlib import Path
from typing import Any


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("state", type=Path)
    parser.add_argument("--pause", choices=["before-create", "after-create"])
    parser.add_argument("--marker", type=Path, default=Path("/nonexistent/marker"))
    options = parser.parse_args()
    request = json.load(sys.stdin)
    action = request["action"]
    pause = options.pause if action == "create" and not options.marker.exists() else None
    if pause == "before-create":
        _pause(options.marker)
    with _locked(options.state) as mailboxes:
        result = _apply(action, request, mailboxes, options.state)
    if pause == "after-create" and result == 0:
        _pause(options.marker)
    return result


def _apply(action: str, request: dict[str, Any], mailboxes: dict[str, Any], state: Path) -> int:
    address = request.get("address")
    if action == "list":
        domains = set(request["domains"])
        listed = [
            {"address": name, "enabled": box["enabled"]}
            for name, box in sorted(mailboxes.items())
            if name.rpartition("@")[2] in domains
        ]
        sys.stdout.write(json.dumps({"mailboxes": listed}))
        return 0
    if action == "create":
        if address in mailboxes:
            sys.stderr.write(f"{address} exists already\n")
            return 1
        mailboxes[address] = {"hash": request["passwordHash"], "enabled": request["enabled"]}
    elif action == "delete":
        if mailboxes.pop(address, None) is None:
            return 0  # nothing to delete: done, and nothing to log
    elif action in {"enable", "disable"}:
        if address not in mailboxes:
            sys.stderr.write(f"no mailbox {address}\n")
            return 1
        mailboxes[address]["enabled"] = action == "enable"
    elif action == "set-password":
        if address not in mailboxes:
            sys.stderr.write(f"no mailbox {address}\n")
            return 1
        mailboxes[address]["hash"] = request["passwordHash"]
    else:
        sys.stderr.write(f"unknown action {action}\n")
        return 2
    with state.with_suffix(".log").open("a", encoding="utf-8") as log:
        log.write(f"{action} {address}\n")
    return 0


class _locked:
    """The state file's mailboxes, read and written back under an exclusive lock."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> dict[str, Any]:
        self.handle = self.path.with_suffix(".lock").open("w")
        fcntl.flock(self.handle, fcntl.LOCK_EX)
        self.mailboxes: dict[str, Any] = (
            json.loads(self.path.read_text(encoding="utf-8")) if self.path.exists() else {}
        )
        return self.mailboxes

    def __exit__(self, kind: object, *_: object) -> None:
        if kind is None:
            temporary = self.path.with_suffix(".tmp")
            temporary.write_text(json.dumps(self.mailboxes), encoding="utf-8")
            temporary.replace(self.path)
        self.handle.close()


def _pause(marker: Path) -> None:
    marker.write_text("paused", encoding="utf-8")
    time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main())
