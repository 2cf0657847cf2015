"""A stub resolver for portal.netguard (settings.NETGUARD_RESOLVER): names answer what the
test says, in order (the last answer repeats), so DNS rebinding can be played; other names
go to the real getaddrinfo (numeric forms, localhost)."""

from __future__ import annotations

import socket
from typing import Any

ANSWERS: dict[str, list[str]] = {}
ASKED: list[str] = []
PATH = "tests.fakes.resolver.getaddrinfo"


def getaddrinfo(host: str, port: Any, family: int = 0, type: int = 0, *args: Any) -> list[Any]:
    ASKED.append(host)
    answers = ANSWERS.get(host.lower())
    if answers is None:
        return socket.getaddrinfo(host, port, family, type)
    answer = answers.pop(0) if len(answers) > 1 else answers[0]
    if answer == "NXDOMAIN":
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    # "a,b": one answer with two addresses.
    return [
        (
            socket.AF_INET6 if ":" in address else socket.AF_INET,
            socket.SOCK_STREAM,
            6,
            "",
            (address, int(port or 0)),
        )
        for address in answer.split(",")
    ]


def reset() -> None:
    ANSWERS.clear()
    ASKED.clear()
