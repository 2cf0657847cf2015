"""Pure-ish: GET a remote provider's suggestion API, hardened against what comes back.

One pooled HTTP(S) client per process (urllib3: keep-alive connections per host, shared by
threads). Administrators set these URLs, so any address is allowed, private networks and
plain http included (issue 4); what is refused is in the answer: more than `max_bytes`,
slower than `timeout` in total, a status other than 200, a type other than JSON, and
redirects to another origin (scheme, host and port). Certificates are verified.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import HTTPError, NewConnectionError, TimeoutError

# Same-origin redirects followed at most this many times (a trailing slash, a new path).
MAX_REDIRECTS = 2
_JSON_TYPES = ("application/json", "text/json")
_CHUNK = 8192


class FetchFailed(Exception):
    """The provider did not answer usable bytes. `timed_out` tells a timeout from an error."""

    def __init__(self, detail: str, *, timed_out: bool = False) -> None:
        self.detail = detail
        self.timed_out = timed_out
        super().__init__(detail)


@dataclass(frozen=True)
class ClientConfig:
    user_agent: str
    source_address: str = ""
    max_pools: int = 100
    connections_per_host: int = 10


class _Watchdog:
    """Cuts the connection of one fetch at its deadline, whatever the exchange is doing.

    Socket timeouts bound each wait for bytes, not their sum: a provider that sends its
    headers just before the limit and then stalls, or drips a byte at a time, would hold
    the worker far past it. At the deadline the watchdog shuts the socket down, which wakes
    a blocked read at once (urllib3 documents HTTPResponse.shutdown for the same purpose,
    but only once the headers are in).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._connection: HTTPConnection | None = None
        self.expired = False

    def attach(self, connection: HTTPConnection) -> None:
        """The fetch now uses `connection` (cut at once if the deadline has passed)."""
        with self._lock:
            self._connection = connection
            if self.expired:
                _shut(connection)

    def expire(self) -> None:
        with self._lock:
            self.expired = True
            if self._connection is not None:
                _shut(self._connection)


def _shut(connection: HTTPConnection) -> None:
    sock = connection.sock
    if sock is None:
        return  # not connected yet: attach() cuts it once it is
    # socket.socket's own shutdown, also for a TLS socket: SSLSocket.shutdown would drop its
    # SSL object under the thread that is reading with it. OSError: already closed.
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


_current = threading.local()  # the watchdog of this thread's fetch, if one is running


class _WatchedConnectionMixin:
    """Tells the running fetch's watchdog which connection (and socket) it is using."""

    def request(self, *args: Any, **kwargs: Any) -> None:
        watchdog: _Watchdog | None = getattr(_current, "watchdog", None)
        connection: Any = self
        if watchdog is not None:
            watchdog.attach(connection)
        super().request(*args, **kwargs)  # type: ignore[misc]
        if watchdog is not None:
            watchdog.attach(connection)  # a plain-http socket is opened inside request()


class _WatchedHTTPConnection(_WatchedConnectionMixin, HTTPConnection):
    pass


class _WatchedHTTPSConnection(_WatchedConnectionMixin, HTTPSConnection):
    pass


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


_lock = threading.Lock()
_pools: dict[ClientConfig, urllib3.PoolManager] = {}


def pool_for(config: ClientConfig) -> urllib3.PoolManager:
    """The process's pool manager for this configuration (created on first use)."""
    with _lock:
        manager = _pools.get(config)
        if manager is None:
            kwargs = {}
            if config.source_address:
                kwargs["source_address"] = (config.source_address, 0)
            manager = urllib3.PoolManager(
                num_pools=config.max_pools,
                maxsize=config.connections_per_host,
                block=False,
                headers={"User-Agent": config.user_agent, "Accept": "application/json"},
                retries=False,
                **kwargs,
            )
            manager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}
            _pools[config] = manager
        return manager


def fetch_json(
    url: str,
    params: dict[str, str],
    *,
    timeout: float,
    max_bytes: int,
    config: ClientConfig,
) -> bytes:
    """The body of a 200 JSON answer to GET `url` with `params`, or FetchFailed.

    `timeout` bounds the whole exchange, redirects included: connecting, sending, the
    headers and the body. At the deadline a watchdog cuts the connection, however the
    provider dribbles its answer; the call returns within milliseconds of it.
    """
    watchdog = _Watchdog()
    timer = threading.Timer(timeout, watchdog.expire)
    timer.daemon = True
    _current.watchdog = watchdog
    timer.start()
    try:
        return _fetch(url, params, time.monotonic() + timeout, max_bytes, config, watchdog)
    except FetchFailed:
        if watchdog.expired:  # whatever the cut looked like to the reader: an EOF, a reset
            raise FetchFailed("time limit reached", timed_out=True) from None
        raise
    finally:
        timer.cancel()
        _current.watchdog = None


def _fetch(
    url: str,
    params: dict[str, str],
    deadline: float,
    max_bytes: int,
    config: ClientConfig,
    watchdog: _Watchdog,
) -> bytes:
    manager = pool_for(config)
    origin = _origin(url)
    fields: dict[str, str] | None = params
    for _hop in range(MAX_REDIRECTS + 1):
        left = deadline - time.monotonic()
        if left <= 0:
            raise FetchFailed("time limit reached", timed_out=True)
        try:
            response = manager.request(
                "GET",
                url,
                fields=fields,
                redirect=False,
                retries=False,
                preload_content=False,
                timeout=urllib3.Timeout(connect=left, read=left),
            )
        except NewConnectionError as exc:  # refused, unreachable, no such name
            # Checked first: urllib3 makes it a subclass of its connect-timeout error.
            raise FetchFailed(f"connection failed: {type(exc).__name__}") from None
        except TimeoutError:
            raise FetchFailed("no answer in time", timed_out=True) from None
        except (HTTPError, OSError) as exc:
            raise FetchFailed(f"connection failed: {type(exc).__name__}") from None
        try:
            if response.status in (301, 302, 303, 307, 308):
                location = response.headers.get("Location", "")
                target = urljoin(url, location)
                if not location or _origin(target) != origin:
                    raise FetchFailed(f"redirect to another origin ({response.status})")
                url, fields = target, None  # the Location carries its own query
                continue
            if response.status != 200:
                raise FetchFailed(f"HTTP {response.status}")
            content_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
            if content_type not in _JSON_TYPES:
                raise FetchFailed(f"not JSON: Content-Type {content_type or 'missing'}")
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise FetchFailed(f"answer larger than {max_bytes} bytes")
            body = _read_capped(response, max_bytes, deadline)
            if watchdog.expired:  # the cut ends the body like a clean EOF would
                raise FetchFailed("answer not complete in time", timed_out=True)
            return body
        finally:
            if not response.closed:
                response.close()  # unread or cut short: this connection is not reusable
            response.release_conn()  # its pool slot back (a closed one reconnects on use)
    raise FetchFailed(f"more than {MAX_REDIRECTS} redirects")


def _read_capped(response: urllib3.BaseHTTPResponse, max_bytes: int, deadline: float) -> bytes:
    body = bytearray()
    try:
        # read1: whatever has arrived (read(n) would wait for n bytes, past the deadline).
        while chunk := response.read1(_CHUNK):
            body += chunk
            if len(body) > max_bytes:
                raise FetchFailed(f"answer larger than {max_bytes} bytes")
            if time.monotonic() > deadline:
                raise FetchFailed("answer not complete in time", timed_out=True)
    except TimeoutError:
        raise FetchFailed("answer not complete in time", timed_out=True) from None
    except (HTTPError, OSError) as exc:
        raise FetchFailed(f"connection failed while reading: {type(exc).__name__}") from None
    return bytes(body)


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or default
