"""portal.netguard: RELIABILITY.md checks 18 (refused targets) and 19 (rebinding, redirects,
size and time), against real local servers and an egress monitor."""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from portal import netguard
from tests.fakes import egress, resolver
from tests.fakes.push_service import PushService, Rule

# A public address that is never contacted: names resolving to it are refused before any
# connection, or the test is about checks made without connecting.
PUBLIC = "93.184.215.14"


@pytest.fixture(autouse=True)
def _stub_dns(settings: Any) -> Iterator[None]:
    settings.NETGUARD_RESOLVER = resolver.PATH
    settings.PORTAL_EGRESS_ALLOW = []
    resolver.reset()
    yield
    resolver.reset()


@pytest.fixture
def service() -> Iterator[PushService]:
    server = PushService().start()
    yield server
    server.stop()


# RELIABILITY.md check 18, every form in its list.
REFUSED_HOSTS = [
    "127.0.0.1",
    "localhost",
    "0.0.0.0",
    "10.0.0.1",
    "172.16.0.1",
    "192.168.1.1",
    "169.254.169.254",
    "100.64.0.1",
    "[::1]",
    "[fc00::1]",
    "[fe80::1]",
    "[::ffff:127.0.0.1]",
    "[::ffff:10.0.0.1]",
    "[2002:7f00:1::]",
    "[64:ff9b::7f00:1]",
    "2130706433",
    "0x7f000001",
    "0177.0.0.1",
    "127.1",
]


@pytest.mark.parametrize("host", REFUSED_HOSTS)
def test_check_url_refuses_non_global_targets_without_connecting(host: str) -> None:
    with egress.watching() as attempts, pytest.raises(netguard.EgressRefused):
        netguard.check_url(f"https://{host}/push/abc", allow_http=False)
    assert attempts == []


@pytest.mark.parametrize("host", REFUSED_HOSTS)
def test_request_refuses_non_global_targets_at_send_time_without_connecting(host: str) -> None:
    with egress.watching() as attempts, pytest.raises(netguard.EgressRefused):
        netguard.request(
            f"https://{host}/push/abc",
            method="POST",
            body=b"{}",
            headers={},
            allow_http=False,
            connect_timeout=1,
            read_timeout=1,
            total_timeout=2,
            max_bytes=1024,
        )
    assert attempts == []


@pytest.mark.parametrize(
    "url",
    [
        "https://user@127.0.0.1/x",
        f"https://user:pw@{PUBLIC}/x",
        f"http://{PUBLIC}/x",  # http while the policy is https-only
        f"gopher://{PUBLIC}/x",
        "file:///etc/passwd",
        f"https://{PUBLIC}:22/x",  # a non-allowed port
        f"https://{PUBLIC}:6379/x",
        "https:///nohost",
        f"https://{PUBLIC}:99999/x",
    ],
)
def test_check_url_refuses_schemes_credentials_and_ports(url: str) -> None:
    with egress.watching() as attempts, pytest.raises(netguard.EgressRefused):
        netguard.check_url(url, allow_http=False)
    assert attempts == []


def test_check_url_accepts_a_public_https_url_without_connecting() -> None:
    resolver.ANSWERS["push.example.net"] = [PUBLIC]
    with egress.watching() as attempts:
        target = netguard.check_url("https://push.example.net/wpush/v2/abc?x=1", allow_http=False)
    assert attempts == []
    assert (target.host, target.port, target.path) == ("push.example.net", 443, "/wpush/v2/abc?x=1")
    assert target.addresses == (ipaddress.ip_address(PUBLIC),)


def test_a_name_with_one_private_answer_among_public_ones_is_refused() -> None:
    resolver.ANSWERS["mixed.example.net"] = [f"{PUBLIC},127.0.0.1"]
    with egress.watching() as attempts, pytest.raises(netguard.EgressRefused):
        netguard.check_url("https://mixed.example.net/x", allow_http=False)
    assert attempts == []


def test_unresolvable_names_are_their_own_error() -> None:
    resolver.ANSWERS["gone.example.net"] = ["NXDOMAIN"]
    with pytest.raises(netguard.UnresolvableHost):
        netguard.check_url("https://gone.example.net/x", allow_http=False)


@pytest.mark.parametrize(
    ("host", "asked"),
    [
        (PUBLIC, False),
        ("[2001:db8::1]", False),  # documentation range: refused, never resolved
        ("127.0.0.1", False),
        ("127.1", True),  # a legacy form goes to the resolver, which reads it as 127.0.0.1
        ("0x7f000001", True),
    ],
)
def test_literal_addresses_are_checked_without_the_resolver(host: str, asked: bool) -> None:
    name = host.strip("[]")
    try:
        addresses = netguard.resolve(host, 993)
    except netguard.EgressRefused:
        addresses = []
    else:
        assert addresses == [ipaddress.ip_address(name)]
    assert (name in resolver.ASKED) is asked
    if host != PUBLIC:
        assert addresses == []  # every other one is refused


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("2002:7f00:1::", "loopback"),
        ("64:ff9b::7f00:1", "loopback"),
        ("64:ff9b:1::a00:1", "private"),
        ("::127.0.0.1", "loopback"),
        ("::ffff:10.0.0.1", "private"),
        ("100.64.0.1", "not global"),
        ("224.0.0.1", "multicast"),
    ],
)
def test_wrapped_ipv4_addresses_are_unwrapped_before_the_check(address: str, reason: str) -> None:
    found = netguard.refusal_reason(ipaddress.ip_address(address))
    assert found is not None and reason in found


def test_global_addresses_pass_and_the_allow_list_opens_networks(settings: Any) -> None:
    assert netguard.refusal_reason(ipaddress.ip_address(PUBLIC)) is None
    assert netguard.refusal_reason(ipaddress.ip_address("2a00:1450:4001::1")) is None
    settings.PORTAL_EGRESS_ALLOW = [ipaddress.ip_network("127.0.0.0/8")]
    assert netguard.refusal_reason(ipaddress.ip_address("127.0.0.5")) is None
    assert netguard.refusal_reason(ipaddress.ip_address("::ffff:127.0.0.5")) is None
    assert netguard.refusal_reason(ipaddress.ip_address("10.0.0.1")) is not None


# --- RELIABILITY.md check 19 ----------------------------------------------------------------


def _post(url: str, **overrides: Any) -> netguard.Response:
    options: dict[str, Any] = {
        "method": "POST",
        "body": b"{}",
        "headers": {"Content-Type": "application/json"},
        "allow_http": True,
        "connect_timeout": 2.0,
        "read_timeout": 2.0,
        "total_timeout": 5.0,
        "max_bytes": 4096,
    }
    options.update(overrides)
    return netguard.request(url, **options)


def test_rebinding_name_checked_public_then_loopback_is_not_contacted(service: PushService) -> None:
    # Validation (subscription time) sees a public address; at send time the same name
    # answers 127.0.0.1, where the local service listens: it must see nothing.
    resolver.ANSWERS["rebind.example.net"] = [PUBLIC, "127.0.0.1"]
    url = "https://rebind.example.net/push"
    assert netguard.check_url(url, allow_http=False).addresses == (ipaddress.ip_address(PUBLIC),)

    with egress.watching() as attempts, pytest.raises(netguard.EgressRefused):
        _post(url)
    assert attempts == []
    assert service.received == []


def test_request_connects_to_the_address_it_checked_and_resolves_once(
    service: PushService, settings: Any
) -> None:
    settings.PORTAL_EGRESS_ALLOW = [ipaddress.ip_network("127.0.0.0/8")]
    # A second resolution would answer 127.0.0.2, where nothing listens.
    resolver.ANSWERS["pinned.test"] = ["127.0.0.1", "127.0.0.2"]
    with egress.watching() as attempts:
        answer = _post(f"http://pinned.test:{service.port}/p")
    assert answer.status == 201
    assert resolver.ASKED.count("pinned.test") == 1
    assert attempts == [("127.0.0.1", service.port)]
    assert service.to("/p")[0].headers["host"] == f"pinned.test:{service.port}"


def test_redirects_are_answers_and_are_never_followed(service: PushService, settings: Any) -> None:
    settings.PORTAL_EGRESS_ALLOW = [ipaddress.ip_network("127.0.0.0/8")]
    service.rules["/public"] = Rule(status=302, headers={"Location": service.url("/internal")})

    answer = _post(service.url("/public"))

    assert answer.status == 302
    assert service.to("/internal") == []


def test_an_answer_larger_than_the_cap_is_aborted(service: PushService, settings: Any) -> None:
    settings.PORTAL_EGRESS_ALLOW = [ipaddress.ip_network("127.0.0.0/8")]
    service.rules["/big"] = Rule(status=200, body=b"x" * 1_000_000)

    with pytest.raises(netguard.EgressError) as caught:
        _post(service.url("/big"), max_bytes=65_536)
    assert caught.value.reason == "too_large"


def test_read_timeout_fires_within_its_bound(service: PushService, settings: Any) -> None:
    settings.PORTAL_EGRESS_ALLOW = [ipaddress.ip_network("127.0.0.0/8")]
    service.rules["/stall"] = Rule(delay=10)

    started = time.monotonic()
    with pytest.raises(netguard.EgressError) as caught:
        _post(service.url("/stall"), read_timeout=0.5, total_timeout=5.0)
    assert caught.value.reason == "timeout"
    assert time.monotonic() - started < 2.0


def test_a_slow_drip_is_cut_by_the_total_deadline(settings: Any) -> None:
    settings.PORTAL_EGRESS_ALLOW = [ipaddress.ip_network("127.0.0.0/8")]
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]

    def drip() -> None:
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        try:
            for _ in range(100):
                conn.sendall(b"x")
                time.sleep(0.1)  # every byte well inside the read timeout
        except OSError:
            pass
        conn.close()

    threading.Thread(target=drip, daemon=True).start()
    started = time.monotonic()
    with pytest.raises(netguard.EgressError) as caught:
        _post(f"http://127.0.0.1:{port}/", read_timeout=1.0, total_timeout=1.0)
    assert caught.value.reason == "timeout"
    assert time.monotonic() - started < 2.0
    listener.close()


def test_a_header_drip_is_cut_by_the_total_deadline(settings: Any) -> None:
    # Each header byte arrives well inside the read timeout; only a deadline for the whole
    # exchange ends it (http.client reads the headers line by line, byte by byte here).
    settings.PORTAL_EGRESS_ALLOW = [ipaddress.ip_network("127.0.0.0/8")]
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]

    def drip() -> None:
        conn, _ = listener.accept()
        conn.recv(65536)
        try:
            conn.sendall(b"HTTP/1.1 200 OK\r\nX-Drip: ")
            for _ in range(100):
                conn.sendall(b"x")
                time.sleep(0.1)
        except OSError:
            pass
        conn.close()

    threading.Thread(target=drip, daemon=True).start()
    started = time.monotonic()
    with pytest.raises(netguard.EgressError) as caught:
        _post(f"http://127.0.0.1:{port}/", read_timeout=1.0, total_timeout=1.0)
    assert caught.value.reason == "timeout"
    assert time.monotonic() - started < 1.8
    listener.close()


@pytest.fixture
def blackhole() -> Iterator[Callable[[str, int], int]]:
    """Addresses that never answer a connect: a listener that accepts nothing, its backlog
    full, so the kernel drops further SYNs (like a firewalled or vanished host)."""
    held: list[socket.socket] = []

    def make(host: str, port: int = 0) -> int:
        listener = socket.socket()
        listener.bind((host, port))
        listener.listen(0)
        held.append(listener)
        port = listener.getsockname()[1]
        for _ in range(8):
            probe = socket.socket()
            probe.settimeout(0.2)
            try:
                probe.connect((host, port))
            except TimeoutError:
                probe.close()
                return port  # the hole is there: a connect waits
            held.append(probe)  # it filled a slot of the queue; keep it there
        raise RuntimeError("the listener's backlog does not fill up")

    yield make
    for sock in held:
        sock.close()


def test_connect_timeout_fires_on_an_address_that_never_answers(
    settings: Any, blackhole: Callable[[str, int], int]
) -> None:
    settings.PORTAL_EGRESS_ALLOW = [ipaddress.ip_network("127.0.0.0/8")]
    port = blackhole("127.0.0.1", 0)
    started = time.monotonic()
    with pytest.raises(netguard.EgressError) as caught:
        _post(f"http://127.0.0.1:{port}/", connect_timeout=1.0, total_timeout=5.0)
    assert caught.value.reason == "timeout"
    assert 0.9 < time.monotonic() - started < 1.8


def _two_black_holes(settings: Any, blackhole: Callable[[str, int], int], name: str) -> int:
    """`name` resolves to 127.0.0.1 and 127.0.0.2, neither answering on the port returned."""
    settings.PORTAL_EGRESS_ALLOW = [ipaddress.ip_network("127.0.0.0/8")]
    port = blackhole("127.0.0.1", 0)
    blackhole("127.0.0.2", port)
    resolver.ANSWERS[name] = ["127.0.0.1,127.0.0.2"]
    return port


@pytest.mark.parametrize(
    ("connect_timeout", "total_timeout"), [(1.0, 5.0), (5.0, 1.0)], ids=["connect", "total"]
)
def test_the_connect_timeout_and_the_deadline_cover_all_addresses_together(
    settings: Any,
    blackhole: Callable[[str, int], int],
    connect_timeout: float,
    total_timeout: float,
) -> None:
    port = _two_black_holes(settings, blackhole, "two.test")
    started = time.monotonic()
    with egress.watching() as attempts, pytest.raises(netguard.EgressError) as caught:
        _post(
            f"http://two.test:{port}/",
            connect_timeout=connect_timeout,
            total_timeout=total_timeout,
        )
    assert caught.value.reason == "timeout"
    assert time.monotonic() - started < 1.8  # one second for both, not one each
    assert [address for address, _port in attempts] == ["127.0.0.1", "127.0.0.2"]


def test_imap_connect_timeout_covers_all_addresses_together(
    settings: Any, blackhole: Callable[[str, int], int]
) -> None:
    port = _two_black_holes(settings, blackhole, "imap.two.test")
    started = time.monotonic()
    with pytest.raises(netguard.EgressError) as caught:
        netguard.connect("imap.two.test", port, allowed_ports=netguard.IMAP_PORTS, timeout=1.0)
    assert caught.value.reason == "timeout"
    assert time.monotonic() - started < 1.8


def test_imap_connect_refuses_other_ports_on_public_hosts() -> None:
    resolver.ANSWERS["imap.example.net"] = [PUBLIC]
    with egress.watching() as attempts, pytest.raises(netguard.EgressRefused):
        netguard.connect("imap.example.net", 25, allowed_ports=netguard.IMAP_PORTS, timeout=1)
    assert attempts == []


def test_tls_is_verified_for_the_name_while_connecting_to_the_checked_address(
    settings: Any,
) -> None:
    import ssl
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from tests.fakes.certs import self_signed

    settings.PORTAL_EGRESS_ALLOW = [ipaddress.ip_network("127.0.0.0/8")]
    cert = self_signed("push.test")

    class Ok(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(201)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Ok)
    server.socket = cert.server_context().wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_address[1]
    resolver.ANSWERS["push.test"] = ["127.0.0.1"]
    resolver.ANSWERS["other.test"] = ["127.0.0.1"]
    try:
        answer = _post(f"https://push.test:{port}/", allow_http=False, tls=cert.client_context())
        assert answer.status == 201
        with pytest.raises(netguard.EgressError) as caught:  # the certificate names push.test
            _post(f"https://other.test:{port}/", allow_http=False, tls=cert.client_context())
        assert caught.value.reason == "tls"
        with pytest.raises(netguard.EgressError):  # not trusted by the system's CAs
            _post(f"https://push.test:{port}/", allow_http=False)
        assert isinstance(cert.client_context(), ssl.SSLContext)
    finally:
        server.shutdown()
        server.server_close()
