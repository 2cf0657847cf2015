"""A small scriptable IMAP server (asyncio, in a thread) for what Dovecot will not do on cue.

It speaks just enough for the push proxy: CAPABILITY, LOGIN, AUTHENTICATE PLAIN, STARTTLS,
EXAMINE/SELECT, IDLE/DONE, NOOP, LOGOUT; and the test scripts faults: new mail (EXISTS) on
demand, BYE, a TCP reset, a stall after `+ idling` (DONE never answered), no IDLE at all.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
import ssl
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any

USER = "juliet@example.org"
PASSWORD = "Balcony-at-midnight-42"  # the stub's test account


@dataclass
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    user: str = ""
    selected: bool = False
    idle_tag: str = ""
    exists: int = 0


@dataclass
class ImapStub:
    idle: bool = True
    tls: ssl.SSLContext | None = None
    starttls: ssl.SSLContext | None = None
    stall_done: bool = False
    exists: int = 2
    commands: list[str] = field(default_factory=list)
    logins: int = 0
    port: int = 0

    def __post_init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._conns: list[_Conn] = []
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.base_events.Server | None = None

    # --- life cycle ---------------------------------------------------------------------

    def start(self) -> ImapStub:
        self._thread.start()
        self._server = self._call(
            asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls, start_serving=True)
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        async def close() -> None:
            assert self._server is not None
            self._server.close()
            for conn in list(self._conns):
                conn.writer.close()
            await self._server.wait_closed()
            await asyncio.sleep(0.05)  # let the connection handlers finish

        if self._loop.is_closed():
            return
        self._call(close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    # --- what tests do ------------------------------------------------------------------

    @property
    def connections(self) -> int:
        return len(self._conns)

    def wait_for(self, predicate: Any, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.01)
        return bool(predicate())

    def new_mail(self, count: int = 1) -> None:
        """`count` new messages: each connection with the mailbox open hears EXISTS."""

        async def deliver() -> None:
            for _ in range(count):
                self.exists += 1
                for conn in self._conns:
                    if conn.selected and conn.idle_tag:
                        conn.exists = self.exists
                        await self._send(conn, f"* {self.exists} EXISTS")

        self._call(deliver())

    def inject(self, index: int) -> float:
        """One new message for the `index`-th idling connection only; the time it was sent
        (time.monotonic, comparable across processes on Linux). For benchmarks."""

        async def deliver() -> float:
            idling = [conn for conn in self._conns if conn.selected and conn.idle_tag]
            conn = idling[index % len(idling)]
            conn.exists += 1
            sent = time.monotonic()
            await self._send(conn, f"* {conn.exists} EXISTS")
            return sent

        result: float = self._call(deliver())
        return result

    def bye(self) -> None:
        async def bye() -> None:
            for conn in list(self._conns):
                await self._send(conn, "* BYE server shutting down")
                conn.writer.close()

        self._call(bye())

    def reset(self) -> None:
        """Close every connection with a TCP RST (SO_LINGER 0)."""

        async def reset() -> None:
            for conn in list(self._conns):
                sock = conn.writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.writer.transport.abort()

        self._call(reset())

    # --- the protocol -------------------------------------------------------------------

    def _capabilities(self, conn: _Conn) -> str:
        caps = ["IMAP4rev1", "AUTH=PLAIN"]
        if self.idle:
            caps.append("IDLE")
        if self.starttls is not None and not conn.writer.get_extra_info("sslcontext"):
            caps.append("STARTTLS")
        return " ".join(caps)

    async def _send(self, conn: _Conn, line: str) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            conn.writer.write(line.encode() + b"\r\n")
            await conn.writer.drain()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Conn(reader, writer)
        self._conns.append(conn)
        try:
            await self._send(conn, f"* OK [CAPABILITY {self._capabilities(conn)}] stub ready")
            while True:
                raw = await conn.reader.readline()
                if not raw:
                    return
                line = raw.decode().rstrip("\r\n")
                if conn.idle_tag:
                    self.commands.append(line)
                    if line.upper() == "DONE" and not self.stall_done:
                        await self._send(conn, f"{conn.idle_tag} OK Idle completed")
                        conn.idle_tag = ""
                    continue
                tag, _, rest = line.partition(" ")
                command, _, args = rest.partition(" ")
                self.commands.append(command.upper())
                if not await self._command(conn, tag, command.upper(), args):
                    return
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            return
        finally:
            self._conns.remove(conn)
            with contextlib.suppress(Exception):
                writer.close()

    async def _command(self, conn: _Conn, tag: str, command: str, args: str) -> bool:
        if command == "CAPABILITY":
            await self._send(conn, f"* CAPABILITY {self._capabilities(conn)}")
            await self._send(conn, f"{tag} OK done")
        elif command == "STARTTLS" and self.starttls is not None:
            await self._send(conn, f"{tag} OK Begin TLS")
            await conn.writer.start_tls(self.starttls)
        elif command == "LOGIN":
            user, _, password = args.partition(" ")
            await self._login(conn, tag, user.strip('"'), password.strip('"'))
        elif command == "AUTHENTICATE" and args.upper() == "PLAIN":
            await self._send(conn, "+ ")
            answer = base64.b64decode((await conn.reader.readline()).strip())
            _authz, user, password = answer.decode().split("\0")
            await self._login(conn, tag, user, password)
        elif command in {"EXAMINE", "SELECT"}:
            if args.strip('"').upper() != "INBOX":
                await self._send(conn, f"{tag} NO [NONEXISTENT] Mailbox doesn't exist")
            else:
                conn.selected = True
                conn.exists = self.exists
                await self._send(conn, f"* {self.exists} EXISTS")
                await self._send(conn, "* 0 RECENT")
                await self._send(conn, f"{tag} OK [READ-ONLY] {command} completed")
        elif command == "IDLE" and self.idle:
            conn.idle_tag = tag
            await self._send(conn, "+ idling")
        elif command == "NOOP":
            if conn.exists != self.exists:
                conn.exists = self.exists
                await self._send(conn, f"* {self.exists} EXISTS")
            await self._send(conn, f"{tag} OK NOOP completed")
        elif command == "LOGOUT":
            await self._send(conn, "* BYE Logging out")
            await self._send(conn, f"{tag} OK Logout completed")
            return False
        else:
            await self._send(conn, f"{tag} BAD unknown command")
        return True

    async def _login(self, conn: _Conn, tag: str, user: str, password: str) -> None:
        if user == USER and password == PASSWORD:
            self.logins += 1
            conn.user = user
            await self._send(conn, f"{tag} OK [CAPABILITY {self._capabilities(conn)}] Logged in")
        else:
            await self._send(conn, f"{tag} NO [AUTHENTICATIONFAILED] Authentication failed.")
