"""Fixtures of the providers tests: our clientConfig validator (specs/autoconfig.md), fake
remote providers (real local HTTP servers) and a real Celery worker for the fan-out."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from django.conf import settings as django_settings

from providers.models import Provider
from tests.conftest import need_service

ROOT = Path(__file__).resolve().parents[2]


def _load_validator() -> ModuleType:
    # The tests folder is not a package (pytest's importlib mode), so load it by path.
    path = Path(__file__).with_name("clientconfig_validator.py")
    spec = importlib.util.spec_from_file_location("clientconfig_validator", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def validate_clientconfig() -> Callable[[bytes], list[str]]:
    """Problems our validator finds in a clientConfig document (empty: valid)."""
    validate: Callable[[bytes], list[str]] = _load_validator().validate
    return validate


# ----- fake remote providers and a real Celery worker (the suggestion fan-out) --------------


@dataclass
class Hit:
    """One request a fake provider received."""

    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    client: str
    client_port: int


@dataclass
class FakeProvider:
    """A real local HTTP server playing a remote provider's suggestion API.

    `answer(handler)` decides what it does; the default answers one suggestion entry after
    `delay` seconds. `hits` records every request, `url` is where it listens.
    """

    delay: float = 0.0
    status: int = 200
    body: bytes | None = None
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    # "answer"; "reset" (RST without an answer); "drip" (the body a byte every 50 ms);
    # "stall" (headers, then `stall` seconds of nothing before the body); "drip-headers"
    # (the status line and headers a byte every 50 ms, for ever).
    mode: str = "answer"
    stall: float = 0.0
    tls: bool = False  # https with a certificate for 127.0.0.1 (fixture tls_fake_provider)
    host: str = "127.0.0.1"
    # Per path: (status, headers, body) instead of the settings above.
    routes: dict[str, tuple[int, dict[str, str], bytes]] = field(default_factory=dict)
    hits: list[Hit] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.host}:{self.server.server_address[1]}/suggest"

    def default_body(self, query: dict[str, list[str]]) -> bytes:
        first = query.get("first_name", [""])[0].lower() or "x"
        last = query.get("last_name", [""])[0].lower() or "y"
        port = self.server.server_address[1] if self.server else 0
        entry = {"succeeded": True, "addresses": [f"{first}.{last}@p{port}.example"], "price": 0}
        return json.dumps(entry).encode()


def _handler_for(fake: FakeProvider) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            query = parse_qs(parts.query)
            fake.hits.append(
                Hit(parts.path, query, dict(self.headers.items()), *self.client_address[:2])
            )
            if parts.path in fake.routes:
                status, headers, body = fake.routes[parts.path]
                self.send_response(status)
                headers = {"Content-Length": str(len(body)), **headers}
                for name, value in headers.items():
                    if value:  # "" leaves the header out
                        self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = not headers["Content-Length"]
                return
            if fake.delay:
                time.sleep(fake.delay)
            if fake.mode == "reset":
                # SO_LINGER 0: close() sends RST, the client sees "connection reset".
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
                self.connection.close()
                self.close_connection = True
                return
            if fake.mode == "drip-headers":
                with contextlib.suppress(OSError):  # the client hangs up, eventually
                    for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 60_000:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        time.sleep(0.05)
                self.close_connection = True
                return
            body = fake.body if fake.body is not None else fake.default_body(query)
            self.send_response(fake.status)
            self.send_header("Content-Type", fake.content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in fake.headers.items():
                self.send_header(name, value)
            self.end_headers()
            if fake.mode == "stall":
                self.wfile.flush()
                time.sleep(fake.stall)
            if fake.mode == "drip":
                for byte in body:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(0.05)
            else:
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet: pytest's capture would hold it

    return Handler


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hangs up early (size cap, timeout) is what some tests do


@pytest.fixture
def fake_provider() -> Iterator[Callable[..., FakeProvider]]:
    """Start fake remote providers: `fake_provider(delay=0.1)`, `fake_provider(status=500)`."""
    started: list[FakeProvider] = []

    def start(*, tls_context: ssl.SSLContext | None = None, **options: Any) -> FakeProvider:
        fake = FakeProvider(tls=tls_context is not None, **options)
        server = _QuietServer((fake.host, 0), _handler_for(fake))
        if tls_context is not None:
            server.socket = tls_context.wrap_socket(server.socket, server_side=True)
        fake.server = server
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        started.append(fake)
        return fake

    yield start
    for fake in started:
        assert fake.server is not None
        fake.server.shutdown()
        fake.server.server_close()


@pytest.fixture(scope="session")
def provider_certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate (and key) for 127.0.0.1, made with openssl."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture
def tls_fake_provider(
    fake_provider: Callable[..., FakeProvider],
    provider_certificate: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[..., FakeProvider]:
    """Fake providers over https, whose certificate the client trusts (SSL_CERT_FILE)."""
    cert, key = provider_certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    # OpenSSL reads SSL_CERT_FILE whenever a client loads the default trust store.
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))

    def start(**options: Any) -> FakeProvider:
        return fake_provider(tls_context=context, **options)

    return start


@pytest.fixture
def hosted(make_provider: Callable[..., Provider]) -> Provider:
    """A hosted provider that the provider list offers (hosted.example)."""
    return make_provider(
        domains=("hosted.example",),
        tos_url="https://hosted.example/tos",
        privacy_url="https://hosted.example/privacy",
        name="Hosted Mail",
    )


@pytest.fixture
def make_remote_provider(
    make_provider: Callable[..., Provider],
) -> Callable[..., Provider]:
    """A saved remote provider whose suggestion API is `url` (defaults: listable, 1 s limit)."""

    def make(url: str, *, domain: str, **fields: Any) -> Provider:
        values = {
            "hosted": False,
            "registration_url": f"https://{domain}/signup?email={{email}}",
            "suggestion_url": url,
            "tos_url": f"https://{domain}/tos",
            "privacy_url": f"https://{domain}/privacy",
            "suggestion_timeout": 1.0,
            "name": domain,
            "short_name": domain.split(".")[0],
            **fields,
        }
        return make_provider(domains=(domain,), servers=(), **values)

    return make


@dataclass
class SuggestWorker:
    """The fixture's worker: its node name, its process and the file its output goes to."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """Stop the process (SIGSTOP) for the block: a worker that consumes nothing."""
        self.process.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            self.process.send_signal(signal.SIGCONT)


@pytest.fixture(scope="session")
def celery_worker() -> Iterator[SuggestWorker]:
    """A real Celery worker process on the `suggest` queue, through the configured Redis.

    Started as deploy/Procfile starts the `suggest` worker (threads pool, log level INFO).
    Its broker and results are REDIS_URL's database (the test run's own), so no other
    checkout's worker consumes its tasks. Fails under REQUIRE_SERVICES without Redis.
    """
    if not django_settings.HAS_REDIS:
        need_service("Redis", "REDIS_URL is not set: no broker for a worker")
    name = f"suggest-test-{uuid.uuid4().hex[:8]}@%h"
    log_path = Path(tempfile.mkstemp(prefix="celery-worker-", suffix=".log")[1])
    command = [
        sys.executable, "-m", "celery", "-A", "portal", "worker",
        "-Q", "suggest", "-P", "threads", "-c", "16", "-n", name,
        "--without-mingle", "--without-gossip", "--without-heartbeat", "--loglevel", "INFO",
    ]  # fmt: skip
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        _wait_for_worker(process, log_path)
        yield SuggestWorker(name=name, process=process, log=log_path)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        log_path.unlink(missing_ok=True)


def _wait_for_worker(process: subprocess.Popen[bytes], log: Path) -> None:
    """Until the worker answers a real fan-out task (a provider that refuses connections)."""
    from providers import tasks

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    request = {
        "provider": "probe.invalid",
        "url": f"http://127.0.0.1:{closed}/",
        "params": {},
        "timeout": 1.0,
    }
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            need_service("Celery worker", f"exited: {log.read_text(errors='replace')[-2000:]}")
        result = tasks.query_provider.apply_async((request,))
        try:
            answer = result.get(timeout=3)
        except Exception:  # not consuming yet
            result.forget()
            continue
        result.forget()
        if answer["status"] == "error":
            return
    need_service("Celery worker", f"no answer in 60 s: {log.read_text(errors='replace')[-2000:]}")


@pytest.fixture(params=["threads", "celery"])
def fanout_mode(request: pytest.FixtureRequest, settings: Any) -> str:
    """Run a test with remote providers asked from threads (no Redis) and by a Celery worker."""
    if request.param == "celery":
        request.getfixturevalue("celery_worker")
        settings.CELERY_TASK_ALWAYS_EAGER = False
    else:
        settings.CELERY_TASK_ALWAYS_EAGER = True
    mode: str = request.param
    return mode


@pytest.fixture
def threads_mode(settings: Any) -> None:
    """The fan-out without a worker: remote providers asked from this process's threads."""
    settings.CELERY_TASK_ALWAYS_EAGER = True


# ----- onboarding tokens (QR onboarding) ------------------------------------------------------


@pytest.fixture
def make_token(make_provider: Callable[..., Provider]) -> Callable[..., Any]:
    """Issue a token through the service: `make_token(max_uses=10)` -> IssuedToken.

    Creates the provider example.org on first use unless `domain=` is given.
    """
    from datetime import timedelta

    from providers.models import OnboardingToken, ProviderDomain
    from providers.services import onboarding

    def make(
        *,
        domain: ProviderDomain | None = None,
        valid_for: timedelta | None = timedelta(days=7),
        **fields: Any,
    ) -> onboarding.IssuedToken:
        if domain is None:
            domain = ProviderDomain.objects.filter(name="example.org").first()
            if domain is None:
                domain = make_provider().domains.get()
        values = {"name": f"token {uuid.uuid4().hex[:8]}", "max_uses": 1, **fields}
        return onboarding.issue_token(
            token=OnboardingToken(domain=domain, **values), valid_for=valid_for
        )

    return make
