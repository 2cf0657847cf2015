"""A small scriptable IMAP server (asyncio, in a thread) for what Dovecot will not do on cue.

It speaks just enough for the push proxy: CAPABILITY, LOGIN (quoted strings and literals),
AUTHENTICATE PLAIN, STARTTLS, EXAMINE/SELECT, IDLE/DONE, NOOP, LOGOUT; and the test scripts
faults: new mail (EXISTS) on demand, BYE, a TCP reset, a stall after `+ idling` (DONE never
answered), no IDLE at all, no AUTH=PLAIN (LOGIN only), a flood of bytes (a huge literal or a
line without end) to the idling connections or inside the EXAMINE answer.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import socket
import ssl
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any

USER = "juliet@example.org"
PASSWORD = "Balcony-at-midnight-42"  # the stub's test account
_LITERAL = re.compile(rb"\{(\d+)(\+?)\}$")
_FLOOD_CHUNK = 65_536


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
    auth_plain: bool = True
    password: str = PASSWORD
    # Further user names accepted with the same password (many accounts on one stub), or
    # every user name (benchmarks: one account per session).
    users: tuple[str, ...] = ()
    any_user: bool = False
    # Sent inside the EXAMINE answer, before its tagged OK (a server flooding the login).
    examine_extra: bytes = b""
    exists: int = 2
    commands: list[str] = field(default_factory=list)
    logins: int = 0
    logouts: int = 0  # LOGOUT commands answered (a clean logout, not a dropped connection)
    flooded: int = 0  # bytes written by `flood` so far
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

    @property
    def idling(self) -> int:
        """Connections in IDLE now (only they hear `new_mail`)."""
        return sum(1 for conn in self._conns if conn.selected and conn.idle_tag)

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

    def inject_user(self, user: str) -> float | None:
        """One new message for the idling connection logged in as `user`; the time it was
        sent (time.monotonic), or None if no such connection idles. For benchmarks."""

        async def deliver() -> float | None:
            conn = next((c for c in self._conns if c.user == user and c.idle_tag), None)
            if conn is None:
                return None
            conn.exists += 1
            sent = time.monotonic()
            await self._send(conn, f"* {conn.exists} EXISTS")
            return sent

        result: float | None = self._call(deliver())
        return result

    def flood(self, head: bytes, size: int) -> None:
        """Send `head`, then `size` bytes of "x" to every idling connection, in the background
        (the writes wait while the client does not read; `flooded` counts what went out)."""

        async def flood(conn: _Conn) -> None:
            with contextlib.suppress(ConnectionError, RuntimeError):
                conn.writer.write(head)
                left = size
                while left > 0:
                    chunk = min(left, _FLOOD_CHUNK)
                    conn.writer.write(b"x" * chunk)
                    await conn.writer.drain()
                    left -= chunk
                    self.flooded += chunk

        async def start() -> None:
            for conn in self._conns:
                if conn.selected and conn.idle_tag:
                    self._loop.create_task(flood(conn))

        self._call(start())

    def end_idle(self, status: str = "OK") -> None:
        """The server ends IDLE by itself: a tagged `status` to every idling connection."""

        async def end() -> None:
            for conn in self._conns:
                if conn.selected and conn.idle_tag:
                    tag, conn.idle_tag = conn.idle_tag, ""
                    await self._send(conn, f"{tag} {status} IDLE ended by the server")

        self._call(end())

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
        caps = ["IMAP4rev1"]
        if self.auth_plain:
            caps.append("AUTH=PLAIN")
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
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                if conn.idle_tag:
                    self.commands.append(line)
                    if line.upper() == "DONE" and not self.stall_done:
                        await self._send(conn, f"{conn.idle_tag} OK Idle completed")
                        conn.idle_tag = ""
                    continue
                tag, _, rest = line.partition(" ")
                command, _, args = rest.partition(" ")
                self.commands.append(command.upper())
                if command.upper() == "LOGIN":
                    raw_args = raw.rstrip(b"\r\n").split(b" ", 2)[2:]
                    user, password = await self._astrings(conn, raw_args[0] if raw_args else b"")
                    await self._login(conn, tag, user, password)
                    continue
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
        elif command == "AUTHENTICATE" and args.upper() == "PLAIN" and self.auth_plain:
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
                if self.examine_extra:
                    with contextlib.suppress(ConnectionError, RuntimeError):
                        conn.writer.write(self.examine_extra)
                        await conn.writer.drain()
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
            self.logouts += 1
            await self._send(conn, "* BYE Logging out")
            await self._send(conn, f"{tag} OK Logout completed")
            return False
        else:
            await self._send(conn, f"{tag} BAD unknown command")
        return True

    async def _astrings(self, conn: _Conn, text: bytes) -> tuple[str, str]:
        """LOGIN's two arguments: atoms, quoted strings or literals ({n} answered with a
        continuation, {n+} not), decoded as UTF-8."""
        values: list[bytes] = []
        while len(values) < 2:
            text = text.lstrip(b" ")
            literal = _LITERAL.match(text)
            if literal:
                if not literal.group(2):
                    await self._send(conn, "+ go ahead")
                values.append(await conn.reader.readexactly(int(literal.group(1))))
                text = (await conn.reader.readline()).rstrip(b"\r\n")
            elif text.startswith(b'"'):
                value, index = bytearray(), 1
                while index < len(text) and text[index : index + 1] != b'"':
                    if text[index : index + 1] == b"\\":
                        index += 1
                    value += text[index : index + 1]
                    index += 1
                values.append(bytes(value))
                text = text[index + 1 :]
            else:
                atom, _, text = text.partition(b" ")
                values.append(atom)
        return values[0].decode("utf-8", "replace"), values[1].decode("utf-8", "replace")

    async def _login(self, conn: _Conn, tag: str, user: str, password: str) -> None:
        accepted = self.any_user or user == USER or user in self.users
        if accepted and password == self.password:
            self.logins += 1
            conn.user = user
            await self._send(conn, f"{tag} OK [CAPABILITY {self._capabilities(conn)}] Logged in")
        else:
            await self._send(conn, f"{tag} NO [AUTHENTICATIONFAILED] Authentication failed.")
