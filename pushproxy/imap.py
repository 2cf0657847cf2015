"""IMAP for the push proxy: log in with imapclient, then watch one mailbox with IDLE or NOOP.

`open_session` connects (to an address the caller got from portal.netguard), secures the
connection (implicit TLS, STARTTLS, or plain where the operator allows it), logs in,
EXAMINEs the mailbox and hands back a `Session`: from then on this module speaks the few
commands a watcher needs (IDLE/DONE, NOOP, LOGOUT) over the socket itself. imapclient's
parser is not needed for them, and owning the read buffer from the first byte means a
timeout never loses half a line and an EOF is seen as an EOF (imapclient's idle_check
treats it as "nothing yet", which would spin).

Pure of Django: the caller passes timeouts and the connect function. Works the same in OS
threads and in gevent greenlets (after monkey-patching, sockets are cooperative).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import imaplib
import re
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError, LoginError

from pushproxy.sealing import Secret

TLS: Final = "tls"
STARTTLS: Final = "starttls"
PLAIN: Final = "none"
SECURITY_CHOICES: Final = (TLS, STARTTLS, PLAIN)
DEFAULT_PORTS: Final = {TLS: 993, STARTTLS: 143, PLAIN: 143}

# TCP keepalive: first probe after 60 s of silence, then every 20 s, give up after 3 (the
# issue's 60/20/3): a vanished peer or NAT entry is noticed in about two minutes.
KEEPALIVE: Final = (60, 20, 3)
# imaplib refuses longer lines too; a server sending more is broken or hostile.
MAX_LINE: Final = 1_000_000
_RECV: Final = 16_384

_UNTAGGED_NUMBER = re.compile(rb"^\* (\d+) ([A-Za-z]+)")
_LITERAL = re.compile(rb"\{(\d+)\+?\}\r\n$")


class ImapFailure(Exception):
    """Logging in or opening the mailbox failed; `code` is the API's error code."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code  # imap_auth_failed, imap_unreachable, imap_tls_failed,
        # mailbox_not_found, imap_error
        self.message = message
        super().__init__(f"{code}: {message}")


class SessionLost(Exception):
    """The watched session ended: bye, eof, reset, timeout, protocol."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


@dataclass(frozen=True)
class Mailbox:
    """Where to log in and what to watch. No password: that travels separately, sealed."""

    host: str
    port: int
    security: str
    username: str
    mailbox: str = "INBOX"

    @property
    def account_key(self) -> str:
        """SHA-256 of lower-cased host, port, lower-cased user and mailbox (specs/push-proxy.md):
        the same IMAP account and mailbox always has the same key, whoever asks."""
        text = "\0".join([self.host.lower(), str(self.port), self.username.lower(), self.mailbox])
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Event:
    """One untagged response while watching: `* 3 EXISTS` is Event("EXISTS", 3)."""

    kind: str
    number: int | None = None
    text: str = ""


def set_keepalive(sock: socket.socket, idle: int, interval: int, count: int) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    if hasattr(socket, "TCP_KEEPIDLE"):  # Linux; macOS has TCP_KEEPALIVE instead
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, count)


class _Reader:
    """The session's one read buffer: lines and literals from the socket, nothing lost."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()

    def fill(self) -> bool:
        """One recv into the buffer (honouring the socket's timeout); False at EOF."""
        chunk = self.sock.recv(_RECV)
        if not chunk:
            return False
        self.buffer += chunk
        return True

    def take_line(self) -> bytes | None:
        end = self.buffer.find(b"\n")
        if end < 0:
            if len(self.buffer) > MAX_LINE:
                raise SessionLost("protocol", "line too long")
            return None
        line = bytes(self.buffer[: end + 1])
        del self.buffer[: end + 1]
        return line

    def take(self, size: int) -> bytes | None:
        if len(self.buffer) < size:
            return None
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data


class _PinnedIMAP4(imaplib.IMAP4):
    """imaplib over a socket we made (checked address, keepalive, TLS for the host name),
    reading through our `_Reader` so the session can take over the same buffer."""

    def __init__(
        self, host: str, port: int, connect: Callable[[], socket.socket], tls: ssl.SSLContext | None
    ) -> None:
        self._connect_fn = connect
        self._tls = tls
        self.reader: _Reader | None = None
        super().__init__(host, port)

    def open(self, host: str = "", port: int = 143, timeout: float | None = None) -> None:
        self.host = host
        self.port = port
        sock = self._connect_fn()
        if self._tls is not None:
            sock = self._tls.wrap_socket(sock, server_hostname=host)
        self.sock = sock
        self.reader = _Reader(sock)

    def starttls(self, ssl_context: Any = None) -> Any:
        """imaplib's STARTTLS, with our reader: anything the server sent after its OK and
        before the handshake is refused (RFC 3207-style command injection), and reading
        restarts on the TLS socket."""
        if getattr(self, "_tls_established", False):
            raise self.abort("TLS session already established")
        if "STARTTLS" not in self.capabilities:
            raise self.abort("TLS not supported by server")
        typ, dat = self._simple_command("STARTTLS")
        if typ != "OK":
            raise self.error("Couldn't establish TLS session")
        assert self.reader is not None  # noqa: S101 - set by open()
        if self.reader.buffer:
            raise self.abort("data arrived between STARTTLS and the TLS handshake")
        self.sock = ssl_context.wrap_socket(self.sock, server_hostname=self.host)
        self.reader = _Reader(self.sock)
        self._tls_established = True
        self._get_capabilities()
        return self._untagged_response(typ, dat, "STARTTLS")

    def read(self, size: int) -> bytes:
        assert self.reader is not None  # noqa: S101
        while (data := self.reader.take(size)) is None:
            if not self.reader.fill():
                data, self.reader.buffer = bytes(self.reader.buffer), bytearray()
                return data
        return data

    def readline(self) -> bytes:
        assert self.reader is not None  # noqa: S101
        while (line := self.reader.take_line()) is None:
            if not self.reader.fill():
                line, self.reader.buffer = bytes(self.reader.buffer), bytearray()
                return line
        return line

    def shutdown(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        finally:
            self.sock.close()


class _Client(IMAPClient):  # type: ignore[misc]
    """IMAPClient whose connection is a `_PinnedIMAP4`."""

    def __init__(
        self,
        mailbox: Mailbox,
        connect: Callable[[], socket.socket],
        tls: ssl.SSLContext | None,
        timeout: float,
    ) -> None:
        self._pinned_connect = connect
        self._pinned_tls = tls
        super().__init__(mailbox.host, port=mailbox.port, ssl=False, timeout=timeout)
        # imapclient turns imaplib's debug output up to level 5, which keeps the last ten
        # commands (a LOGIN with its password among them) in memory; we log none of it.
        self._imap.debug = 0

    def _create_IMAP4(self) -> _PinnedIMAP4:
        return _PinnedIMAP4(self.host, self.port, self._pinned_connect, self._pinned_tls)


@functools.cache
def default_tls_context() -> ssl.SSLContext:
    """One verifying context for the process. Each new context loads the system's CA store
    again: about 16 ms and 200 KB per login when made per session (measured)."""
    return ssl.create_default_context()


def open_session(
    mailbox: Mailbox,
    password: Secret,
    *,
    connect: Callable[[], socket.socket],
    timeout: float,
    ssl_context: ssl.SSLContext | None = None,
    tag_prefix: str = "P",
) -> Session:
    """A logged-in session with `mailbox.mailbox` EXAMINEd (read-only: we never change it).

    `connect` returns a connected TCP socket (portal.netguard.connect). TLS verifies the
    certificate against `mailbox.host` with `ssl_context` (default: the system's CAs).
    Raises ImapFailure with the API's code; the password appears in no message.
    """
    context = ssl_context
    if context is None and mailbox.security != PLAIN:
        context = default_tls_context()
    tls = context if mailbox.security == TLS else None

    def connect_with_keepalive() -> socket.socket:
        sock = connect()
        sock.settimeout(timeout)
        set_keepalive(sock, *KEEPALIVE)
        # imaplib writes a command's parts separately (AUTHENTICATE's answer, then CRLF):
        # with Nagle each login waited on the server's delayed ACK (~40 ms, measured).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    try:
        client = _Client(mailbox, connect_with_keepalive, tls, timeout)
    except ssl.SSLError as exc:
        raise ImapFailure(
            "imap_tls_failed", f"TLS with {mailbox.host} failed: {exc.reason}"
        ) from None
    except (OSError, imaplib.IMAP4.error) as exc:
        raise ImapFailure("imap_unreachable", _describe(exc, mailbox)) from None
    try:
        if mailbox.security == STARTTLS:
            assert context is not None  # noqa: S101 - made above for every TLS kind
            _starttls(client, context, mailbox)
        capabilities = set(client.capabilities())
        try:
            if b"AUTH=PLAIN" in capabilities:
                client.plain_login(mailbox.username, password.reveal())
            else:
                client.login(mailbox.username, password.reveal())
        except LoginError as exc:
            if "UNAVAILABLE" in str(exc):  # RFC 5530: a temporary failure, not a refusal
                raise ImapFailure("imap_unreachable", "The server cannot log in now.") from None
            raise ImapFailure("imap_auth_failed", "The IMAP server refused the login.") from None
        capabilities = set(client.capabilities())
        try:
            selected = client.select_folder(mailbox.mailbox, readonly=True)
        except IMAPClientError:
            raise ImapFailure(
                "mailbox_not_found", f"There is no mailbox {mailbox.mailbox!r}."
            ) from None
        imap = client._imap
        reader = imap.reader
        assert reader is not None  # noqa: S101
        return Session(
            sock=imap.sock,
            reader=reader,
            exists=int(selected.get(b"EXISTS", 0)),
            idle=b"IDLE" in capabilities,
            tag_prefix=tag_prefix,
        )
    except ImapFailure:
        _abandon(client)
        raise
    except ssl.SSLError as exc:
        _abandon(client)
        raise ImapFailure(
            "imap_tls_failed", f"TLS with {mailbox.host} failed: {exc.reason}"
        ) from None
    except (OSError, imaplib.IMAP4.error, IMAPClientError) as exc:
        _abandon(client)
        raise ImapFailure("imap_error", _describe(exc, mailbox)) from None


def _starttls(client: _Client, context: ssl.SSLContext, mailbox: Mailbox) -> None:
    if b"STARTTLS" not in set(client.capabilities()):
        raise ImapFailure("imap_tls_failed", f"{mailbox.host} does not offer STARTTLS.")
    try:
        client.starttls(context)
    except ssl.SSLError as exc:
        raise ImapFailure(
            "imap_tls_failed", f"TLS with {mailbox.host} failed: {exc.reason}"
        ) from None


def _abandon(client: _Client) -> None:
    with contextlib.suppress(Exception):  # closing a broken connection: nothing to report
        client._imap.shutdown()


def _describe(exc: BaseException, mailbox: Mailbox) -> str:
    # Only the class name: server texts can be long, and never contain our password, but
    # a message built from an exception could (imaplib quotes commands in some errors).
    return f"{mailbox.host}:{mailbox.port}: {type(exc).__name__}"


class Session:
    """A logged-in, EXAMINEd connection that only watches. Owned by one thread or greenlet,
    except `interrupt`, which another may call to wake it."""

    __slots__ = (
        "_idle_tag",
        "_reader",
        "_sock",
        "_tag",
        "_tag_prefix",
        "exists",
        "idle",
        "interrupted",
    )

    def __init__(
        self, *, sock: socket.socket, reader: _Reader, exists: int, idle: bool, tag_prefix: str
    ) -> None:
        self._sock = sock
        self._reader = reader
        self._tag = 0
        self._tag_prefix = tag_prefix
        self._idle_tag: bytes | None = None
        self.exists = exists
        self.idle = idle
        self.interrupted = False

    @property
    def socket(self) -> socket.socket:
        return self._sock

    # --- commands -------------------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        try:
            self._sock.sendall(data)
        except TimeoutError:
            raise SessionLost("timeout", "sending") from None
        except OSError as exc:
            raise SessionLost("reset", type(exc).__name__) from None

    def _command(self, name: bytes) -> bytes:
        self._tag += 1
        tag = f"{self._tag_prefix}{self._tag}".encode("ascii")
        self._send(tag + b" " + name + b"\r\n")
        return tag

    def start_idle(self, timeout: float) -> list[Event]:
        """IDLE; returns what arrived before the server's continuation."""
        self._idle_tag = self._command(b"IDLE")
        events: list[Event] = []
        while True:
            line = self._read_response(timeout)
            if line.startswith(b"+"):
                return events
            if line.startswith(self._idle_tag + b" "):
                raise SessionLost("protocol", "IDLE refused")
            events.append(_parse(line))
            _raise_on_bye(events[-1])

    def end_idle(self, timeout: float) -> list[Event]:
        """DONE, then the untagged responses up to IDLE's tagged OK (within `timeout`)."""
        tag = self._idle_tag or b""
        self._idle_tag = None
        self._send(b"DONE\r\n")
        return self._until_tagged(tag, timeout)

    def noop(self, timeout: float) -> list[Event]:
        return self._until_tagged(self._command(b"NOOP"), timeout)

    def logout(self, timeout: float) -> None:
        """LOGOUT politely (DONE first while idling); best effort, then close."""
        try:
            if self._idle_tag is not None:
                self._idle_tag = None
                self._send(b"DONE\r\n")
            tag = self._command(b"LOGOUT")
            while True:
                line = self._read_response(timeout)
                if line.startswith(tag + b" "):
                    break
        except (SessionLost, OSError):
            pass
        finally:
            self.close()

    def wait(self, timeout: float) -> list[Event]:
        """Untagged responses arriving within `timeout` (empty if none)."""
        events: list[Event] = []
        while True:
            line = self._take_response()
            if line is None:
                if events:
                    return events
                if not self._fill(timeout, raise_timeout=False):
                    return events
                continue
            events.append(_parse(line))
            _raise_on_bye(events[-1])
            timeout = 0.0  # return what is buffered, without waiting again

    # --- reading --------------------------------------------------------------------------

    def _until_tagged(self, tag: bytes, timeout: float) -> list[Event]:
        events: list[Event] = []
        while True:
            line = self._read_response(timeout)
            if line.startswith(tag + b" "):
                status = line[len(tag) + 1 :].split(b" ", 1)[0].upper()
                if status != b"OK":
                    raise SessionLost("protocol", f"{status.decode('ascii', 'replace')} answer")
                return events
            events.append(_parse(line))
            _raise_on_bye(events[-1])

    def _read_response(self, timeout: float) -> bytes:
        while (line := self._take_response()) is None:
            self._fill(timeout, raise_timeout=True)
        return line

    def _take_response(self) -> bytes | None:
        """One whole response (a line, plus any literals it announces), or None yet."""
        reader = self._reader
        line = reader.take_line()
        if line is None:
            return None
        parts = [line]
        while (match := _LITERAL.search(parts[-1])) is not None:
            size = int(match.group(1))
            literal = reader.take(size)
            rest = reader.take_line() if literal is not None else None
            if literal is None or rest is None:
                reader.buffer[:0] = b"".join(parts) + (literal or b"")
                return None
            parts += [literal, rest]
        return b"".join(parts)

    def _fill(self, timeout: float, *, raise_timeout: bool) -> bool:
        if timeout <= 0:
            if raise_timeout:
                raise SessionLost("timeout", "no answer in time")
            return False
        try:
            self._sock.settimeout(timeout)
            if self._reader.fill():
                return True
        except TimeoutError:
            if raise_timeout:
                raise SessionLost("timeout", "no answer in time") from None
            return False
        except ssl.SSLError as exc:
            raise SessionLost("eof" if self.interrupted else "reset", exc.reason or "") from None
        except OSError as exc:
            raise SessionLost("reset", type(exc).__name__) from None
        raise SessionLost("eof", "connection closed")

    # --- ending ---------------------------------------------------------------------------

    def interrupt(self) -> None:
        """Wake the owner from a blocking read (it then sees EOF and `interrupted`).

        Only the read side is shut (on the plain socket, not through TLS), so the owner can
        still write LOGOUT; safe from another thread: no TLS state is touched here.
        """
        self.interrupted = True
        with contextlib.suppress(OSError):
            socket.socket.shutdown(self._sock, socket.SHUT_RD)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            socket.socket.shutdown(self._sock, socket.SHUT_RDWR)
        self._sock.close()


def _parse(line: bytes) -> Event:
    match = _UNTAGGED_NUMBER.match(line)
    if match:
        return Event(match.group(2).upper().decode("ascii"), int(match.group(1)))
    if line.startswith(b"* "):
        word, _, rest = line[2:].partition(b" ")
        return Event(
            word.upper().decode("ascii", "replace"),
            None,
            rest.strip().decode("utf-8", "replace")[:200],
        )
    return Event("UNKNOWN", None, line[:200].decode("utf-8", "replace"))


def _raise_on_bye(event: Event) -> None:
    if event.kind == "BYE":
        raise SessionLost("bye", event.text)
