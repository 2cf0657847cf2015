"""The one outbound guard: resolve, refuse non-global addresses, connect to exactly those.

Every connection the portal opens to a user-supplied URL or host (push endpoints, IMAP
hosts of the push proxy) goes through here (RELIABILITY.md, "Design consequences"):

1. the name is resolved once (`settings.NETGUARD_RESOLVER`, `socket.getaddrinfo` unless a
   test installs a stub), and **every** answer is checked: one non-global address refuses
   the whole name, so a DNS answer mixing a public and a private address cannot be used;
2. an address is global only if `ipaddress` says so **after unwrapping** the IPv6 forms
   that carry an IPv4 address (IPv4-mapped, 6to4, NAT64 64:ff9b::/96 and 64:ff9b:1::/48,
   IPv4-compatible ::a.b.c.d): CPython 3.11 calls 2002:7f00:1:: and 64:ff9b::7f00:1 global;
3. the socket connects to the checked address itself, never to the name again (no second
   resolution, so DNS rebinding between check and connect has nothing to change); TLS still
   verifies the certificate for the name;
4. HTTP: no redirect is followed (a 3xx is the answer), the answer is read up to a size cap;
   connecting (all addresses together) has its own time limit, every read one too, and the
   whole exchange (connect, TLS, request, headers, body) a wall-clock deadline that every
   socket operation honours, so an answer dripping a byte at a time cannot outlast it.

`PORTAL_EGRESS_ALLOW` names networks that may be reached although not global (tests:
127.0.0.0/8); inside them any port is allowed. Names that `ipaddress` rejects but the C
resolver accepts (2130706433, 0x7f000001, 0177.0.0.1, 127.1) are resolved like any name
and so checked as the address they really are.
"""

from __future__ import annotations

import http.client
import io
import ipaddress
import logging
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.utils.module_loading import import_string

from portal.audit import security_event
from portal.errors import PortalError

logger = logging.getLogger(__name__)

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# Well-known NAT64 prefixes (RFC 6052, RFC 8215): the IPv4 address sits in the last 32 bits.
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
# ::a.b.c.d (deprecated IPv4-compatible) — but not :: and ::1, which are their own thing.
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")

# Ports a global address may be reached on, per kind of target. Allow-listed networks may
# use any port (test servers, a provider's internal IMAP proxy on 10143).
HTTPS_PORTS = frozenset({443})
HTTP_PORTS = frozenset({80})
IMAP_PORTS = frozenset({143, 993})


class EgressRefused(PortalError):
    """The target is not one the portal may connect to (address, scheme or port)."""

    code = "egress_refused"
    status = HTTPStatus.UNPROCESSABLE_ENTITY
    default_message = "This address may not be used: it is not a public internet address."


def _refused(message: str, **fields: str) -> EgressRefused:
    """EgressRefused, recorded as one `egress.refused` security event (never the URL: a
    push endpoint's path is its credential)."""
    security_event("egress.refused", outcome="refused", reason=message, **fields)
    return EgressRefused(message)


class UnresolvableHost(PortalError):
    """DNS gave no address for the name."""

    code = "unresolvable_host"
    status = HTTPStatus.UNPROCESSABLE_ENTITY
    default_message = "The host name does not resolve."


class EgressError(Exception):
    """A permitted outbound exchange failed: connect, TLS, timeout, reset, oversize."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason  # connect, tls, timeout, reset, too_large, protocol
        super().__init__(message)


# --- addresses ------------------------------------------------------------------------------


def embedded_ipv4(address: Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, 6to4, NAT64, compatible), if any."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    for prefix in _NAT64:
        if address in prefix:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _IPV4_COMPATIBLE and int(address) > 1:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_allow_listed(address: Address) -> bool:
    inner = embedded_ipv4(address)
    candidates = [address] if inner is None else [address, inner]
    return any(
        candidate in network
        for candidate in candidates
        for network in settings.PORTAL_EGRESS_ALLOW
        if candidate.version == network.version
    )


def refusal_reason(address: Address) -> str | None:
    """Why `address` may not be contacted, or None if it may (global, or allow-listed)."""
    if is_allow_listed(address):
        return None
    inner = embedded_ipv4(address)
    if inner is not None:
        inner_reason = refusal_reason(inner)
        if inner_reason is not None:
            return f"{address} carries {inner} ({inner_reason})"
    if address.is_multicast:
        return "multicast"
    if not address.is_global:
        for name in ("loopback", "link_local", "private", "reserved", "unspecified"):
            if getattr(address, f"is_{name}"):
                return name.replace("_", "-")
        return "not global"  # CGNAT 100.64.0.0/10 and the other special ranges
    return None


# --- resolution -----------------------------------------------------------------------------


def _resolver() -> Callable[..., list[tuple[Any, ...]]]:
    resolver: Callable[..., list[tuple[Any, ...]]] = import_string(settings.NETGUARD_RESOLVER)
    return resolver


def resolve(host: str, port: int) -> list[Address]:
    """Every address of `host`, each checked; EgressRefused if any one may not be contacted.

    UnresolvableHost if the name has no address. Literal addresses (also bracketed IPv6)
    are checked without asking DNS.
    """
    name = host.strip().strip("[]")
    if not name:
        raise UnresolvableHost()
    addresses: list[Address] = []
    literal = _literal(name)
    if literal is not None:
        # No resolver call (under gevent, getaddrinfo even of a literal is a trip through
        # its thread pool). Legacy forms (127.1, 0x7f000001) are not literals here: the
        # resolver reads them as the C library does, and the checks below see the result.
        addresses.append(literal)
    else:
        try:
            infos = _resolver()(name, port, 0, socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError, ValueError):
            raise UnresolvableHost(f"{host} does not resolve.") from None
        for info in infos:
            raw = str(info[4][0]).split("%", 1)[0]  # drop an IPv6 zone id
            address = ipaddress.ip_address(raw)
            if address not in addresses:
                addresses.append(address)
    if not addresses:
        raise UnresolvableHost(f"{host} does not resolve.")
    for address in addresses:
        reason = refusal_reason(address)
        if reason is not None:
            raise _refused(
                f"{_printable(host)} resolves to a {reason} address.", address=str(address)
            )
    return addresses


def _literal(name: str) -> Address | None:
    """`name` as an address if it is one in standard notation (dotted quad, IPv6 without a
    zone id), else None."""
    if "%" in name:
        return None
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def check_port(addresses: Iterable[Address], port: int, allowed: frozenset[int]) -> None:
    """EgressRefused unless `port` is allowed, or every address is in PORTAL_EGRESS_ALLOW."""
    if port in allowed:
        return
    if all(is_allow_listed(address) for address in addresses):
        return
    raise _refused(f"Port {port} may not be used here.")


def _printable(text: str) -> str:
    return text.encode("unicode_escape").decode("ascii")[:200]


# --- URLs -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A checked URL: where to connect (addresses, in order) and what to ask for."""

    scheme: str
    host: str
    port: int
    path: str
    addresses: tuple[Address, ...] = field(default=())

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


def check_url(url: str, *, allow_http: bool) -> Target:
    """Parse and check a user-supplied URL; resolve its host now (EgressRefused if not fit).

    https only (http too with `allow_http`), no user name or password in it, the default
    port unless the host is allow-listed.
    """
    parts = urlsplit(url.strip())
    schemes = {"https", "http"} if allow_http else {"https"}
    if parts.scheme not in schemes:
        raise _refused(f"Only {' or '.join(sorted(schemes))} URLs are accepted.")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise _refused("A URL with a user name or password is not accepted.")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise _refused("The URL's port is not a number from 1 to 65535.") from None
    host = parts.hostname or ""
    if not host:
        raise _refused("The URL names no host.")
    addresses = resolve(host, port)
    check_port(addresses, port, HTTPS_PORTS if parts.scheme == "https" else HTTP_PORTS)
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    return Target(parts.scheme, host, port, path, tuple(addresses))


# --- connecting -----------------------------------------------------------------------------


def connect(
    host: str,
    port: int,
    *,
    allowed_ports: frozenset[int],
    timeout: float,
    sources: Sequence[str] = (),
) -> socket.socket:
    """A TCP connection to a checked address of `host` (resolved now, every answer checked).

    Tries the addresses in order, all of them within `timeout`; EgressRefused /
    UnresolvableHost before any connection, EgressError if none answers. `sources`: local
    addresses to leave from; each attempt binds the first of its address family.
    """
    addresses = resolve(host, port)
    check_port(addresses, port, allowed_ports)
    return _connect_any(addresses, port, time.monotonic() + timeout, sources)


def _connect_any(
    addresses: Iterable[Address], port: int, deadline: float, sources: Sequence[str] = ()
) -> socket.socket:
    """A connection to the first address that answers before `deadline` (time.monotonic).

    The time left is shared out: each address gets its part of it (the rest once the
    earlier ones failed), so one that never answers cannot use up the others' time.
    """
    candidates = list(addresses)
    last: OSError | None = None
    for index, address in enumerate(candidates):
        left = deadline - time.monotonic()
        if left <= 0:
            last = TimeoutError()
            break
        family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(left / (len(candidates) - index))
        try:
            source = next(
                (s for s in sources if ipaddress.ip_address(s).version == address.version), None
            )
            if source is not None:
                sock.bind((source, 0))
            sock.connect((str(address), port))
        except OSError as exc:
            sock.close()
            last = exc
            continue
        return sock
    if isinstance(last, TimeoutError):
        raise EgressError("timeout", f"connecting to port {port} timed out")
    raise EgressError("connect", f"cannot connect to port {port}: {type(last).__name__}")


class _Deadline:
    """The end of one exchange: each socket operation waits at most until then (and a
    receive at most `read_timeout` too); TimeoutError once it has passed."""

    def __init__(self, seconds: float, read_timeout: float) -> None:
        self.at = time.monotonic() + seconds
        self.read_timeout = read_timeout

    def left(self, cap: float | None = None) -> float:
        left = self.at - time.monotonic()
        if left <= 0:
            raise TimeoutError("deadline passed")
        return left if cap is None else min(left, cap)


class _BoundedSocket:
    """A connected (TLS) socket as http.client sees it, every send and receive bounded by
    the exchange's deadline: http.client reads headers through `makefile` line by line, and
    a socket timeout alone bounds each receive, not their sum."""

    def __init__(self, sock: socket.socket, deadline: _Deadline) -> None:
        self._sock = sock
        self._deadline = deadline

    def sendall(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            self._sock.settimeout(self._deadline.left(self._deadline.read_timeout))
            view = view[self._sock.send(view) :]

    def recv_into(self, buffer: Any, nbytes: int = 0) -> int:
        self._sock.settimeout(self._deadline.left(self._deadline.read_timeout))
        return self._sock.recv_into(buffer, nbytes)

    def makefile(self, mode: str = "r", *args: Any, **kwargs: Any) -> io.BufferedReader:
        if mode != "rb":
            raise ValueError("only binary reading")
        return io.BufferedReader(_BoundedReader(self))

    def close(self) -> None:
        """Nothing yet: http.client closes the connection as soon as an answer says it
        will close, before its body is read; `request` closes the socket when done."""

    def close_socket(self) -> None:
        self._sock.close()


class _BoundedReader(io.RawIOBase):
    def __init__(self, sock: _BoundedSocket) -> None:
        self._bounded = sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return self._bounded.recv_into(buffer)


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]
    body: bytes


class _PinnedConnection(http.client.HTTPConnection):
    """An HTTP(S) connection to one given socket (no resolution of its own), every
    operation within `deadline`, the TLS handshake included."""

    def __init__(
        self, target: Target, sock: socket.socket, tls: ssl.SSLContext | None, deadline: _Deadline
    ) -> None:
        super().__init__(target.host, target.port)
        self._pinned = sock
        self._tls = tls
        self._deadline = deadline
        self.bounded: _BoundedSocket | None = None

    def connect(self) -> None:
        sock = self._pinned
        if self._tls is not None:
            sock = self._tls.wrap_socket(
                sock, server_hostname=self.host, do_handshake_on_connect=False
            )
            # A handshake's timeout is one limit for the whole of it (CPython's _ssl).
            sock.settimeout(self._deadline.left(self._deadline.read_timeout))
            self.bounded = _BoundedSocket(sock, self._deadline)  # closed by `request`
            sock.do_handshake()
        self.bounded = _BoundedSocket(sock, self._deadline)
        self.sock = self.bounded


def request(
    url: str,
    *,
    method: str,
    body: bytes,
    headers: Mapping[str, str],
    allow_http: bool,
    connect_timeout: float,
    read_timeout: float,
    total_timeout: float,
    max_bytes: int,
    tls: ssl.SSLContext | None = None,
) -> Response:
    """One HTTP exchange with a user-supplied URL, under every rule of this module.

    Resolves and checks now (the check at creation time is not trusted: DNS may have
    changed), connects to a checked address, sends once, never follows a redirect. Raises
    EgressRefused / UnresolvableHost before connecting, EgressError for network trouble, a
    timeout (connect, read, or `total_timeout` for the whole exchange) or an answer larger
    than `max_bytes`.
    """
    target = check_url(url, allow_http=allow_http)
    deadline = _Deadline(total_timeout, read_timeout)
    connect_by = min(time.monotonic() + connect_timeout, deadline.at)
    sock = _connect_any(target.addresses, target.port, connect_by)
    context = None
    if target.scheme == "https":
        context = tls or ssl.create_default_context()
    connection = _PinnedConnection(target, sock, context, deadline)
    try:
        try:
            connection.connect()
        except ssl.SSLError as exc:
            raise EgressError("tls", f"TLS with {target.host} failed: {exc.reason}") from None
        connection.putrequest(method, target.path, skip_host=True, skip_accept_encoding=True)
        connection.putheader("Host", target.host_header)
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        answer = connection.getresponse()
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = answer.read1(16_384)
            if not chunk:
                break
            size += len(chunk)
            if size > max_bytes:
                raise EgressError("too_large", f"the answer is larger than {max_bytes} bytes")
            chunks.append(chunk)
        return Response(
            status=answer.status,
            headers={name.lower(): value for name, value in answer.getheaders()},
            body=b"".join(chunks),
        )
    except TimeoutError:
        raise EgressError("timeout", f"{target.host} did not answer in time") from None
    except (ConnectionError, http.client.HTTPException, ssl.SSLError, OSError) as exc:
        raise EgressError(
            "reset", f"the exchange with {target.host} failed: {type(exc).__name__}"
        ) from None
    finally:
        connection.close()
        if connection.bounded is not None:
            connection.bounded.close_socket()
        sock.close()
