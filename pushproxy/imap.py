"""IMAP for the push proxy: log in with imapclient, then watch one mailbox with IDLE or NOOP.

`open_session` connects (to an address the caller got from portal.netguard), secures the
connection (implicit TLS, STARTTLS, or plain where the operator allows it), logs in,
EXAMINEs the mailbox and hands back a `Session`: from then on this module speaks the few
commands a watcher needs (IDLE/DONE, NOOP, LOGOUT) over the socket itself. imapclient's
parser is not needed for them, and owning the read buffer from the first byte means a
timeout never loses half a line and an EOF is seen as an EOF (imapclient's idle_check
treats it as "nothing yet", which would spin).

The IMAP host is user-supplied, so its answers are bounded: one response (a line and the
literals it announces) at most MAX_RESPONSE bytes, the whole login at most MAX_LOGIN_BYTES,
one command's untagged answers at most MAX_EVENTS; beyond that the login fails or the
session ends (`protocol`).

Pure of Django but for the privacy-mode key of `Mailbox.account_key`: the caller passes
timeouts and the connect function. Works the same in OS threads and in gevent greenlets
(after monkey-patching, sockets are cooperative).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import imaplib
import re
import select
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

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
# One response, its line and any literals together. Dovecot's own line limit is 64 KiB
# (imap_max_line_length), and we never FETCH, so any literal we see is unsolicited: a
# server sending more is broken or hostile, and each byte would sit in our memory
# (imaplib's own line limit, 1 MB, times thousands of sessions).
MAX_RESPONSE: Final = 65_536
# Everything read from the greeting to EXAMINE's answer (a few KB from real servers).
MAX_LOGIN_BYTES: Final = 262_144
# Untagged answers to one command (IDLE's start, DONE, NOOP) before its tagged one.
MAX_EVENTS: Final = 10_000
# A session in an OS thread looks this often whether it was interrupted while it waits;
# in a greenlet the wait itself is cancelled (`Session.interrupt`).
INTERRUPT_CHECK: Final = 0.25
# A command waits this long at most for room in the socket's send buffer (a server that
# stopped reading); LOGOUT only for what is left of its own time.
SEND_TIMEOUT: Final = 30.0
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
    """The watched session ended: bye, eof, reset, timeout, protocol, stopped (interrupted)."""

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

    def __post_init__(self) -> None:
        # RFC 3501 5.1: INBOX is case-insensitive; "inbox" is the same mailbox (and slot).
        if self.mailbox.upper() == "INBOX":
            object.__setattr__(self, "mailbox", "INBOX")

    @property
    def account_key(self) -> str:
        """SHA-256 of lower-cased host, port, lower-cased user and mailbox (specs/push-proxy.md):
        the same IMAP account and mailbox always has the same key, whoever asks.

        In privacy mode (PUSHPROXY_PRIVACY) an HMAC-SHA256 of the same text under a key
        derived from SECRET_KEY: the key is stored, and a plain hash of a guessable address
        would tell anyone holding the database who subscribed."""
        text = "\0".join([self.host.lower(), str(self.port), self.username.lower(), self.mailbox])
        secret = _privacy_key()
        if secret is None:
            return hashlib.sha256(text.encode("utf-8")).hexdigest()
        return hmac.new(secret, text.encode("utf-8"), hashlib.sha256).hexdigest()


def _privacy_key() -> bytes | None:
    """The account keys' HMAC key in privacy mode, else None (also without Django settings,
    as in bench/)."""
    from django.conf import settings

    if not settings.configured or not getattr(settings, "PUSHPROXY_PRIVACY", False):
        return None
    return hashlib.sha256(b"pushproxy account key\0" + settings.SECRET_KEY.encode()).digest()


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

    def __init__(self, sock: socket.socket, budget: int | None = None) -> None:
        self.sock = sock
        self.buffer = bytearray()
        # Bytes it may still receive (the login's MAX_LOGIN_BYTES); None: no limit.
        self.budget = budget

    def fill(self) -> bool:
        """One recv into the buffer (honouring the socket's timeout); False at EOF."""
        chunk = self.sock.recv(_RECV)
        if not chunk:
            return False
        if self.budget is not None:
            self.budget -= len(chunk)
            if self.budget < 0:
                raise SessionLost("protocol", "too much data while logging in")
        self.buffer += chunk
        return True

    def take_line(self) -> bytes | None:
        end = self.buffer.find(b"\n")
        if (end < 0 and len(self.buffer) > MAX_RESPONSE) or end >= MAX_RESPONSE:
            raise SessionLost("protocol", "line too long")
        if end < 0:
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
        self,
        host: str,
        port: int,
        connect: Callable[[], socket.socket],
        tls: ssl.SSLContext | None,
        held: list[socket.socket],
    ) -> None:
        self._connect_fn = connect
        self._tls = tls
        self._held = held
        self.reader: _Reader | None = None
        super().__init__(host, port)

    def open(self, host: str = "", port: int = 143, timeout: float | None = None) -> None:
        self.host = host
        self.port = port
        sock = self._connect_fn()
        self._held.append(sock)
        if self._tls is not None:
            sock = self._tls.wrap_socket(sock, server_hostname=host)
            self._held.append(sock)
        self.sock = sock
        self.reader = _Reader(sock, budget=MAX_LOGIN_BYTES)

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
        self._held.append(self.sock)
        self.reader = _Reader(self.sock, budget=self.reader.budget)
        self._tls_established = True
        self._get_capabilities()
        return self._untagged_response(typ, dat, "STARTTLS")

    def read(self, size: int) -> bytes:
        """A literal of `size` bytes; refused (abort) beyond MAX_RESPONSE before reading it."""
        assert self.reader is not None  # noqa: S101
        if size > MAX_RESPONSE:
            raise self.abort("literal too large")
        while (data := self.reader.take(size)) is None:
            if not self._fill():
                data, self.reader.buffer = bytes(self.reader.buffer), bytearray()
                return data
        return data

    def readline(self) -> bytes:
        assert self.reader is not None  # noqa: S101
        while (line := self._take_line()) is None:
            if not self._fill():
                line, self.reader.buffer = bytes(self.reader.buffer), bytearray()
                return line
        return line

    def _take_line(self) -> bytes | None:
        assert self.reader is not None  # noqa: S101
        try:
            return self.reader.take_line()
        except SessionLost as lost:
            raise self.abort(lost.detail) from None

    def _fill(self) -> bool:
        assert self.reader is not None  # noqa: S101
        try:
            return self.reader.fill()
        except SessionLost as lost:
            raise self.abort(lost.detail) from None

    def login(self, user: str, password: str) -> tuple[Literal["OK"], list[bytes]]:
        """LOGIN with each argument a quoted string if it is printable ASCII, else a UTF-8
        literal (RFC 3501's way to send 8-bit text).

        imaplib's own LOGIN encodes as ASCII: a non-ASCII password raised UnicodeEncodeError,
        whose args carry the password into task results and logs. Nothing here is logged.
        """
        tag = self._new_tag()
        line = tag + b" LOGIN"
        for value in (user, password):
            data = value.encode("utf-8")
            if all(0x20 <= byte < 0x7F for byte in data):
                line += b' "' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
                continue
            self._send_line(line + b" {%d}" % len(data))
            if not self._continued(tag):
                break  # refused before the literal was sent: its answer is read below
            line = data
        else:
            self._send_line(line)
        typ, dat = self._command_complete("LOGIN", tag)
        if typ != "OK":
            raise self.error(dat[-1])
        self.state = "AUTH"
        return "OK", dat

    def _send_line(self, data: bytes) -> None:
        try:
            self.send(data + b"\r\n")
        except OSError as exc:
            raise self.abort(f"socket error: {type(exc).__name__}") from None

    def _continued(self, tag: bytes) -> bool:
        """Wait for the server's "+" continuation; False if it answered `tag` instead."""
        while self._get_response() is not None:  # None: a continuation
            if self.tagged_commands[tag]:
                return False
        return True

    # imaplib keeps its last ten exchanges (a LOGIN line among them) in `_cmd_log`, and with
    # `debug` writes them out: neither happens here.
    def _log(self, line: str) -> None:
        pass

    def _mesg(self, s: str, secs: float | None = None) -> None:
        pass

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
        held: list[socket.socket] | None = None,
    ) -> None:
        self._pinned_connect = connect
        self._pinned_tls = tls
        self._held = [] if held is None else held
        super().__init__(mailbox.host, port=mailbox.port, ssl=False, timeout=timeout)
        # imapclient turns imaplib's debug output up to level 5 and routes it to a logger
        # (a LOGIN line with its password among it); here it stays off (_PinnedIMAP4._mesg).
        self._imap.debug = 0
        self._imap.__dict__.pop("_mesg", None)

    def _create_IMAP4(self) -> _PinnedIMAP4:
        return _PinnedIMAP4(
            self.host, self.port, self._pinned_connect, self._pinned_tls, self._held
        )


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

    held: list[socket.socket] = []  # every socket made, so that a failure closes them
    stage = "connect"
    try:
        client = _Client(mailbox, connect_with_keepalive, tls, timeout, held)
        stage = "login"
        return _log_in(client, mailbox, password, context, tag_prefix)
    except ImapFailure as exc:
        failure = exc
    except ssl.SSLError as exc:
        failure = ImapFailure("imap_tls_failed", f"TLS with {mailbox.host} failed: {exc.reason}")
    except (OSError, imaplib.IMAP4.error) as exc:  # IMAPClientError is imaplib's error
        code = "imap_unreachable" if stage == "connect" else "imap_error"
        failure = ImapFailure(code, _describe(exc, mailbox))
    except Exception as exc:
        if not held:
            raise  # the connect function's own refusal (netguard): nothing sent yet
        # Anything else (a UnicodeError, a ValueError on a hostile answer): its text and
        # args may hold what we sent, the password too. Only its class name goes on.
        failure = ImapFailure("imap_error", _describe(exc, mailbox))
    for sock in reversed(held):
        with contextlib.suppress(OSError):
            sock.close()
    # Raised here, outside the handlers, with no chain: no exception that saw the login
    # travels on inside it (__context__), into a log or a task result.
    failure.__cause__ = failure.__context__ = None
    raise failure


def _log_in(
    client: _Client, mailbox: Mailbox, password: Secret, context: ssl.SSLContext | None, tag: str
) -> Session:
    """STARTTLS if asked, log in (AUTHENTICATE PLAIN where offered, else LOGIN; both send
    UTF-8), EXAMINE; the session takes over the connection and its read buffer."""
    if mailbox.security == STARTTLS:
        assert context is not None  # noqa: S101 - made by open_session for every TLS kind
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
    except IMAPClientError as exc:
        if isinstance(exc, imaplib.IMAP4.abort):
            raise  # the connection broke (or sent too much), not a refusal of the name
        missing = f"There is no mailbox {mailbox.mailbox!r}."
        raise ImapFailure("mailbox_not_found", missing) from None
    imap = client._imap
    reader = imap.reader
    assert reader is not None  # noqa: S101
    reader.budget = None  # logged in: from now on each response is bounded by itself
    return Session(
        sock=imap.sock,
        reader=reader,
        exists=int(selected.get(b"EXISTS", 0)),
        idle=b"IDLE" in capabilities,
        tag_prefix=tag,
    )


def _starttls(client: _Client, context: ssl.SSLContext, mailbox: Mailbox) -> None:
    if b"STARTTLS" not in set(client.capabilities()):
        raise ImapFailure("imap_tls_failed", f"{mailbox.host} does not offer STARTTLS.")
    try:
        client.starttls(context)
    except ssl.SSLError as exc:
        raise ImapFailure(
            "imap_tls_failed", f"TLS with {mailbox.host} failed: {exc.reason}"
        ) from None


def _describe(exc: BaseException, mailbox: Mailbox) -> str:
    # Only the class name: server texts can be long, and never contain our password, but
    # a message built from an exception could (imaplib quotes commands in some errors).
    return f"{mailbox.host}:{mailbox.port}: {type(exc).__name__}"


class _Interrupted(Exception):
    """Thrown into a greenlet waiting on a session's socket by `Session.interrupt`."""


class Session:
    """A logged-in, EXAMINEd connection that only watches. Owned by one thread or greenlet,
    except `interrupt`, which another may call to wake it."""

    __slots__ = (
        "_idle_continued",
        "_idle_tag",
        "_in_thread",
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
        # False while a re-issued IDLE waits for its "+" (DONE may only follow that).
        self._idle_continued = True
        # A gevent socket's waits can be cancelled; an OS thread's blocking read cannot.
        self._in_thread = getattr(sock, "hub", None) is None
        self.exists = exists
        self.idle = idle
        self.interrupted = False

    @property
    def socket(self) -> socket.socket:
        return self._sock

    # --- commands -------------------------------------------------------------------------

    def _send(self, data: bytes, timeout: float = SEND_TIMEOUT) -> None:
        try:
            self._sock.settimeout(max(timeout, 0.001))
            self._sock.sendall(data)
        except _Interrupted:
            raise SessionLost("stopped", "interrupted") from None
        except TimeoutError:
            raise SessionLost("timeout", "sending") from None
        except OSError as exc:
            raise SessionLost("reset", type(exc).__name__) from None

    def _command(self, name: bytes, timeout: float = SEND_TIMEOUT) -> bytes:
        self._tag += 1
        tag = f"{self._tag_prefix}{self._tag}".encode("ascii")
        self._send(tag + b" " + name + b"\r\n", timeout)
        return tag

    def start_idle(self, timeout: float) -> list[Event]:
        """IDLE; returns what arrived before the server's continuation."""
        self._idle_tag = self._command(b"IDLE")
        self._idle_continued = False
        return self._until_continued(time.monotonic() + timeout)

    def end_idle(self, timeout: float) -> list[Event]:
        """DONE, then the untagged responses up to IDLE's tagged OK (within `timeout`)."""
        deadline = time.monotonic() + timeout
        events = self._until_continued(deadline)
        tag = self._idle_tag or b""
        self._idle_tag = None
        self._send(b"DONE\r\n")
        return events + self._until_tagged(tag, deadline)

    def noop(self, timeout: float) -> list[Event]:
        return self._until_tagged(self._command(b"NOOP"), time.monotonic() + timeout)

    def logout(self, timeout: float) -> None:
        """DONE (while idling) and LOGOUT, waiting at most `timeout` in all for its answer;
        best effort, then close. Also after `interrupt`, which leaves the connection (and
        its TLS) able to send and receive."""
        deadline = time.monotonic() + timeout
        try:
            if self._idle_tag is not None:
                self._idle_tag = None
                self._send(b"DONE\r\n", deadline - time.monotonic())
            tag = self._command(b"LOGOUT", deadline - time.monotonic())
            while not self._read_response(deadline, interruptible=False).startswith(tag + b" "):
                pass
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
            if self._idle_tag is not None and line.startswith(self._idle_tag + b" "):
                self._idle_ended(line)
            elif line.startswith(b"+"):
                self._idle_continued = True  # a re-issued IDLE is running
            else:
                events.append(_parse(line))
                _raise_on_bye(events[-1])
            timeout = 0.0  # return what is buffered, without waiting again

    def _idle_ended(self, line: bytes) -> None:
        """The server answered IDLE while we idled (RFC 2177 lets it end IDLE): idle again
        after an OK; a NO or BAD ends the session."""
        status = _status(line, self._idle_tag or b"")
        if status != b"OK":
            raise SessionLost("protocol", f"IDLE ended with {status.decode('ascii', 'replace')}")
        self._idle_tag = self._command(b"IDLE")
        self._idle_continued = False

    # --- reading --------------------------------------------------------------------------

    def _until_continued(self, deadline: float) -> list[Event]:
        """Responses up to IDLE's "+" (at once if it came already)."""
        events: list[Event] = []
        while not self._idle_continued:
            line = self._read_response(deadline)
            if line.startswith(b"+"):
                self._idle_continued = True
            elif self._idle_tag is not None and line.startswith(self._idle_tag + b" "):
                raise SessionLost("protocol", "IDLE refused")
            else:
                self._collect(events, line)
        return events

    def _until_tagged(self, tag: bytes, deadline: float) -> list[Event]:
        events: list[Event] = []
        while True:
            line = self._read_response(deadline)
            if line.startswith(tag + b" "):
                status = _status(line, tag)
                if status != b"OK":
                    raise SessionLost("protocol", f"{status.decode('ascii', 'replace')} answer")
                return events
            self._collect(events, line)

    def _collect(self, events: list[Event], line: bytes) -> None:
        events.append(_parse(line))
        _raise_on_bye(events[-1])
        if len(events) > MAX_EVENTS:
            raise SessionLost("protocol", "too many responses to one command")

    def _read_response(self, deadline: float, *, interruptible: bool = True) -> bytes:
        """One whole response, waiting until `deadline` (time.monotonic) at the latest."""
        while (line := self._take_response()) is None:
            left = deadline - time.monotonic()
            self._fill(left, raise_timeout=True, interruptible=interruptible)
        return line

    def _take_response(self) -> bytes | None:
        """One whole response (a line, plus any literals it announces), or None yet.
        SessionLost (protocol) once it would be larger than MAX_RESPONSE."""
        reader = self._reader
        line = reader.take_line()
        if line is None:
            return None
        parts = [line]
        size = len(line)
        while (match := _LITERAL.search(parts[-1])) is not None:
            digits = match.group(1)
            if len(digits) > 9 or size + int(digits) > MAX_RESPONSE:
                raise SessionLost("protocol", "response too large")
            literal = reader.take(int(digits))
            rest = reader.take_line() if literal is not None else None
            if literal is None or rest is None:
                reader.buffer[:0] = b"".join(parts) + (literal or b"")
                return None
            parts += [literal, rest]
            size += len(literal) + len(rest)
            if size > MAX_RESPONSE:
                raise SessionLost("protocol", "response too large")
        return b"".join(parts)

    def _fill(self, timeout: float, *, raise_timeout: bool, interruptible: bool = True) -> bool:
        """One receive into the buffer within `timeout`: True if data came, False if none
        did (unless `raise_timeout`). SessionLost at EOF and on errors, and, if
        `interruptible`, once `interrupt` was called."""
        if interruptible and self.interrupted:
            raise SessionLost("stopped", "interrupted")
        try:
            if timeout <= 0 or (self._in_thread and not self._readable(timeout, interruptible)):
                raise TimeoutError
            self._sock.settimeout(timeout)
            if self._reader.fill():
                return True
        except _Interrupted:
            if interruptible:
                raise SessionLost("stopped", "interrupted") from None
            return False  # a late wake-up while logging out: the caller's deadline decides
        except TimeoutError:
            if raise_timeout:
                raise SessionLost("timeout", "no answer in time") from None
            return False
        except ssl.SSLError as exc:
            raise SessionLost("reset", exc.reason or "") from None
        except OSError as exc:
            raise SessionLost("reset", type(exc).__name__) from None
        raise SessionLost("eof", "connection closed")

    def _readable(self, timeout: float, interruptible: bool) -> bool:
        """In an OS thread: wait until the socket has something to read, looking every
        INTERRUPT_CHECK seconds whether `interrupt` was called; False after `timeout`."""
        if isinstance(self._sock, ssl.SSLSocket) and self._sock.pending():
            return True
        poller = select.poll()
        poller.register(self._sock, select.POLLIN)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            step = min(left, INTERRUPT_CHECK) if interruptible else left
            if poller.poll(step * 1000):
                return True
            if interruptible and self.interrupted:
                raise _Interrupted()
        return False

    # --- ending ---------------------------------------------------------------------------

    def interrupt(self) -> None:
        """Wake the owner from a wait; it then ends with SessionLost("stopped") and can
        still log out: the connection itself is not touched.

        In a greenlet the wait on the socket is cancelled; an OS thread notices within
        INTERRUPT_CHECK seconds. (Shutting the socket's read side, as this once did, woke
        the owner too, but left a TLS connection broken: LOGOUT never went out.)
        """
        self.interrupted = True
        hub = getattr(self._sock, "hub", None)
        if hub is not None:
            for watcher in (
                getattr(self._sock, "_read_event", None),
                getattr(self._sock, "_write_event", None),
            ):
                hub.cancel_wait(watcher, _Interrupted())

    def close(self) -> None:
        with contextlib.suppress(OSError):
            socket.socket.shutdown(self._sock, socket.SHUT_RDWR)
        self._sock.close()


def _status(line: bytes, tag: bytes) -> bytes:
    """OK, NO or BAD of a tagged response."""
    words = line[len(tag) + 1 :].split(None, 1)
    return words[0].upper() if words else b""


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
