"""POST/GET/DELETE /api/v1/push/subscriptions against a real Dovecot and local push services
(the monitor and push worker are real processes on Redis under REQUIRE_SERVICES=1)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from http import HTTPStatus
from typing import Any

import pytest
from django.test import Client
from imapclient import IMAPClient

from accounts.dovecot import LOOPBACK, PrivateDovecot
from accounts.services.accounts import create_account
from providers.models import Provider
from pushproxy.models import PushSubscription
from tests.fakes.imapstub import PASSWORD as STUB_PASSWORD
from tests.fakes.imapstub import USER as STUB_USER
from tests.fakes.imapstub import ImapStub
from tests.fakes.push_service import PushService
from tests.fakes.tcp_proxy import FaultProxy
from tests.fakes.user_agent import UserAgent, verify_vapid
from tests.pushproxy.conftest import POLL_SECONDS

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]

URL = "/api/v1/push/subscriptions"
PASSWORD = "Balcony-at-midnight-42"
ADDRESS = "juliet@example.org"


@pytest.fixture
def account(
    make_provider: Callable[..., Provider], push_stack: Any, dovecot: PrivateDovecot
) -> str:
    """A fresh address per test (Dovecot keeps each mailbox's messages across tests), once
    Dovecot logs it in: its SQLite reader answers "temporary failure" once after another
    test re-created the dovecot_users view."""
    make_provider()
    local_part = f"juliet{uuid.uuid4().hex[:8]}"
    create_account(
        domain="example.org", local_part=local_part, password=PASSWORD, created_via="admin"
    )
    address = f"{local_part}@example.org"
    assert wait_until(lambda: logs_in(dovecot.port, address), timeout=10)
    return address


def logs_in(port: int, address: str) -> bool:
    client = IMAPClient(LOOPBACK, port=port, ssl=False, timeout=15)
    try:
        client.plain_login(address, PASSWORD)
    except Exception:
        return False
    finally:
        client.logout()
    return True


def subscribe(
    client: Client,
    service: PushService,
    *,
    port: int,
    password: str = PASSWORD,
    username: str = ADDRESS,
    client_id: str = "phone-1",
    mailbox: str = "INBOX",
    keys: dict[str, str] | None = None,
    prefix: str = "",
) -> Any:
    new_mail: dict[str, Any] = {"url": service.url(f"/{prefix}new")}
    if keys:
        new_mail["keys"] = keys
    body = {
        "imap": {
            "host": LOOPBACK,
            "port": port,
            "security": "none",
            "username": username,
            "password": password,
            "mailbox": mailbox,
        },
        "endpoints": {
            "newMail": new_mail,
            "reconnect": {"url": service.url(f"/{prefix}reconnect")},
        },
        "clientId": client_id,
    }
    return client.post(URL, data=json.dumps(body), content_type="application/json")


def append(port: int, address: str, *, subject: str = "Hello", password: str = PASSWORD) -> None:
    """New mail, delivered the way a client files a message: APPEND from another session."""
    message = EmailMessage()
    message["From"] = "romeo@example.org"
    message["To"] = address
    message["Subject"] = subject
    message.set_content("Wherefore art thou.")
    client = IMAPClient(LOOPBACK, port=port, ssl=False, timeout=15)
    try:
        client.plain_login(address, password)
        client.append("INBOX", message.as_bytes())
    finally:
        client.logout()


def sessions(dovecot: PrivateDovecot, address: str) -> int:
    return sum(1 for s in dovecot.sessions() if s.username == address)


def dovecot_said(dovecot: PrivateDovecot, address: str, pid: int) -> str:
    """What Dovecot logged about the IMAP session of `address` in process `pid`."""
    log = dovecot.log_path.read_text(encoding="utf-8", errors="replace")
    return "\n".join(line for line in log.splitlines() if f"imap({address})<{pid}>" in line)


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def auth(token: str) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {token}"}


# --- the "Tests must show" -----------------------------------------------------------


def test_new_mail_reaches_the_json_endpoint_within_two_seconds(
    client: Client, dovecot: PrivateDovecot, account: str, push_service: PushService
) -> None:
    answer = subscribe(client, push_service, username=account, port=dovecot.port)
    assert answer.status_code == HTTPStatus.CREATED, answer.content
    created = answer.json()
    assert (created["status"], created["mode"], created["mailbox"]) == ("active", "idle", "INBOX")
    assert wait_until(lambda: sessions(dovecot, account) == 1)

    appended = time.monotonic()
    append(dovecot.port, account)

    pushes = push_service.wait_for("/new", timeout=5)
    assert len(pushes) == 1
    assert pushes[0].at - appended < 2.0
    assert pushes[0].method == "POST"
    assert pushes[0].headers["content-type"] == "application/json"
    payload = json.loads(pushes[0].body)
    assert payload["type"] == "newMail"
    assert payload["subscription"] == created["id"]
    assert (payload["mailbox"], payload["exists"], payload["reason"]) == ("INBOX", 1, None)
    assert len(payload["event"]) == 32

    def shown() -> dict[str, Any]:
        return client.get(f"{URL}/{created['id']}", **auth(created["token"])).json()

    assert wait_until(lambda: shown()["pushesSent"] == 1, timeout=3)  # counted after the answer
    assert (shown()["status"], shown()["mode"]) == ("active", "idle")
    assert shown()["lastEvent"]["type"] == "newMail"


def test_web_push_payload_decrypts_and_carries_a_valid_vapid_jwt(
    client: Client, dovecot: PrivateDovecot, account: str, push_service: PushService
) -> None:
    agent = UserAgent()
    answer = subscribe(client, push_service, username=account, port=dovecot.port, keys=agent.keys())
    assert answer.status_code == HTTPStatus.CREATED, answer.content

    append(dovecot.port, account)

    pushes = push_service.wait_for("/new", timeout=5)
    assert len(pushes) == 1
    push = pushes[0]
    assert push.headers["content-encoding"] == "aes128gcm"
    assert int(push.headers["ttl"]) > 0
    verify_vapid(push.headers["authorization"], push_service.url("/new"))
    payload = json.loads(agent.decrypt(push.body))
    assert payload["type"] == "newMail"
    assert payload["subscription"] == answer.json()["id"]
    assert payload["exists"] == 1
    assert PASSWORD.encode() not in push.body


def test_wrong_password_is_401_and_keeps_nothing(
    client: Client, dovecot: PrivateDovecot, account: str, push_service: PushService
) -> None:
    answer = subscribe(
        client, push_service, username=account, port=dovecot.port, password="not-" + PASSWORD
    )

    assert answer.status_code == HTTPStatus.UNAUTHORIZED
    assert answer.json()["code"] == "imap_auth_failed"
    assert PushSubscription.objects.count() == 0
    assert sessions(dovecot, account) == 0
    assert push_service.received == []


def test_unknown_mailbox_is_422_and_keeps_nothing(
    client: Client, dovecot: PrivateDovecot, account: str, push_service: PushService
) -> None:
    answer = subscribe(
        client, push_service, username=account, port=dovecot.port, mailbox="No such folder"
    )

    assert answer.status_code == HTTPStatus.UNPROCESSABLE_ENTITY
    assert answer.json()["code"] == "mailbox_not_found"
    assert PushSubscription.objects.count() == 0
    assert wait_until(lambda: sessions(dovecot, account) == 0)


def test_delete_logs_the_session_out_without_a_reconnect_push(
    client: Client, dovecot: PrivateDovecot, account: str, push_service: PushService
) -> None:
    created = subscribe(client, push_service, username=account, port=dovecot.port).json()
    assert wait_until(lambda: sessions(dovecot, account) == 1)
    [watched] = [s.pid for s in dovecot.sessions() if s.username == account]

    answer = client.delete(f"{URL}/{created['id']}", **auth(created["token"]))

    assert answer.status_code == HTTPStatus.NO_CONTENT
    assert wait_until(lambda: sessions(dovecot, account) == 0, timeout=5)
    # Logged out (our LOGOUT answered), not merely disconnected.
    assert wait_until(lambda: "Disconnected: " in dovecot_said(dovecot, account, watched))
    assert "Disconnected: Logged out" in dovecot_said(dovecot, account, watched)
    time.sleep(1.0)
    assert push_service.received == []
    assert client.get(f"{URL}/{created['id']}", **auth(created["token"])).status_code == 404


def test_second_post_for_the_same_slot_replaces_the_first(
    client: Client, dovecot: PrivateDovecot, account: str, push_service: PushService
) -> None:
    first = subscribe(client, push_service, username=account, port=dovecot.port, prefix="a/").json()
    assert wait_until(lambda: sessions(dovecot, account) == 1)

    second = subscribe(
        client, push_service, username=account, port=dovecot.port, prefix="b/"
    ).json()

    assert second["status"] == "active"
    assert wait_until(lambda: sessions(dovecot, account) == 1)
    time.sleep(0.5)
    assert sessions(dovecot, account) == 1
    assert client.get(f"{URL}/{first['id']}", **auth(first["token"])).status_code == 404
    assert client.get(f"{URL}/{second['id']}", **auth(second["token"])).json()["status"] == "active"
    append(dovecot.port, account)
    assert len(push_service.wait_for("/b/new")) == 1
    time.sleep(0.5)
    assert push_service.to("/a/new") == [] and push_service.to("/a/reconnect") == []


def test_another_device_gets_its_own_session(
    client: Client, dovecot: PrivateDovecot, account: str, push_service: PushService
) -> None:
    subscribe(
        client, push_service, username=account, port=dovecot.port, client_id="phone", prefix="p/"
    )
    subscribe(
        client, push_service, username=account, port=dovecot.port, client_id="laptop", prefix="l/"
    )

    assert wait_until(lambda: sessions(dovecot, account) == 2)
    append(dovecot.port, account)
    assert len(push_service.wait_for("/p/new")) == 1
    assert len(push_service.wait_for("/l/new")) == 1


def test_a_cut_connection_pushes_reconnect_and_a_new_subscription_works(
    client: Client, dovecot: PrivateDovecot, account: str, push_service: PushService
) -> None:
    proxy = FaultProxy(dovecot.port)
    try:
        created = subscribe(client, push_service, username=account, port=proxy.port).json()
        assert created["status"] == "active"

        proxy.cut()

        pushes = push_service.wait_for("/reconnect", timeout=10)
        assert len(pushes) == 1
        payload = json.loads(pushes[0].body)
        assert (payload["type"], payload["subscription"]) == ("reconnect", created["id"])
        assert payload["reason"] in {"eof", "reset"}
        shown = client.get(f"{URL}/{created['id']}", **auth(created["token"])).json()
        assert shown["status"] == "lost"

        # The app answers the reconnect push by subscribing again; new mail flows again.
        again = subscribe(client, push_service, username=account, port=proxy.port)
        assert again.status_code == HTTPStatus.CREATED
        append(dovecot.port, account)
        assert len(push_service.wait_for("/new", timeout=5)) == 1
        assert len(push_service.to("/reconnect")) == 1
    finally:
        proxy.close()


def test_a_stopped_dovecot_pushes_reconnect_and_works_again_after_a_restart(
    client: Client,
    extra_dovecot: Callable[..., PrivateDovecot],
    account: str,
    push_service: PushService,
) -> None:
    server = extra_dovecot()
    created = subscribe(client, push_service, username=account, port=server.port).json()
    assert created["status"] == "active"

    server.stop()  # returns once every Dovecot process is gone (about 10 s here)
    down = time.monotonic()

    pushes = push_service.wait_for("/reconnect", timeout=10)
    assert len(pushes) == 1 and pushes[0].at - down < 3
    payload = json.loads(pushes[0].body)
    assert payload["reason"] in {"bye", "eof", "reset"}
    # No retry storm while it is down: one reconnect push, no logins of our own.
    time.sleep(1)
    assert len(push_service.to("/reconnect")) == 1

    server.start()
    again = subscribe(client, push_service, username=account, port=server.port)
    assert again.status_code == HTTPStatus.CREATED, again.content
    append(server.port, account)
    assert len(push_service.wait_for("/new", timeout=5)) == 1


def test_a_dovecot_without_idle_is_polled_and_still_pushes(
    client: Client,
    extra_dovecot: Callable[..., PrivateDovecot],
    account: str,
    push_service: PushService,
) -> None:
    server = extra_dovecot(idle=False)
    answer = subscribe(client, push_service, username=account, port=server.port)
    assert answer.status_code == HTTPStatus.CREATED, answer.content
    assert answer.json()["mode"] == "poll"

    appended = time.monotonic()
    append(server.port, account)

    pushes = push_service.wait_for("/new", timeout=POLL_SECONDS + 5)
    assert len(pushes) == 1
    assert pushes[0].at - appended <= POLL_SECONDS + 2
    assert json.loads(pushes[0].body)["exists"] == 1


# --- stub-backed behaviour (faults Dovecot will not make on cue) ------------------------------


@pytest.fixture
def stub(push_stack: Any) -> Iterator[ImapStub]:
    server = ImapStub().start()
    yield server
    server.stop()


def test_authentication_failed_is_not_retried(
    client: Client, stub: ImapStub, push_service: PushService
) -> None:
    answer = subscribe(client, push_service, port=stub.port, username=STUB_USER, password="wrong")

    assert answer.status_code == HTTPStatus.UNAUTHORIZED
    time.sleep(2.0)
    assert stub.commands.count("AUTHENTICATE") == 1
    assert push_service.received == []


def test_logins_per_imap_account_are_rate_limited(
    client: Client, stub: ImapStub, push_service: PushService, settings: Any
) -> None:
    settings.PUSH_LOGIN_RATE = "3/m"
    answers = [
        subscribe(
            client, push_service, port=stub.port, username=STUB_USER, password="wrong"
        ).status_code
        for _ in range(5)
    ]
    assert answers == [401, 401, 401, 429, 429]
    assert stub.commands.count("AUTHENTICATE") == 3
    limited = subscribe(
        client, push_service, port=stub.port, username=STUB_USER, password=STUB_PASSWORD
    )
    assert limited.status_code == 429
    assert 0 < int(limited["Retry-After"]) <= 60


def test_one_stalled_endpoint_does_not_delay_another(
    client: Client, stub: ImapStub, push_service: PushService
) -> None:
    from tests.fakes.push_service import Rule

    push_service.rules["/slow/new"] = Rule(delay=10)  # RELIABILITY.md check 19: stalls 10 s
    slow = subscribe(
        client,
        push_service,
        port=stub.port,
        username=STUB_USER,
        password=STUB_PASSWORD,
        client_id="a",
        prefix="slow/",
    )
    fast = subscribe(
        client,
        push_service,
        port=stub.port,
        username=STUB_USER,
        password=STUB_PASSWORD,
        client_id="b",
        prefix="fast/",
    )
    assert (slow.status_code, fast.status_code) == (201, 201)
    assert stub.wait_for(lambda: stub.commands.count("IDLE") == 2)

    injected = time.monotonic()
    stub.new_mail()

    assert len(push_service.wait_for("/slow/new", timeout=3)) == 1  # it arrived, then stalls
    fast_pushes = push_service.wait_for("/fast/new", timeout=3)
    assert len(fast_pushes) == 1 and fast_pushes[0].at - injected < 2.0


@pytest.mark.parametrize(
    ("change", "code"),
    [
        (lambda body: body["imap"].update(security="none"), "plaintext_refused"),
        (
            lambda body: body["endpoints"]["newMail"].update(url="http://127.0.0.1/x"),
            "egress_refused",
        ),
        (
            lambda body: body["endpoints"]["reconnect"].update(url="https://10.0.0.1/x"),
            "egress_refused",
        ),
        (lambda body: body["imap"].update(host="127.0.0.1"), "egress_refused"),
    ],
    ids=["plaintext", "http-endpoint", "private-endpoint", "loopback-imap"],
)
def test_refusals_change_nothing_and_contact_nothing(
    client: Client,
    settings: Any,
    change: Callable[[dict[str, Any]], None],
    code: str,
    transactional_db: None,
) -> None:
    from tests.fakes import egress

    settings.PORTAL_EGRESS_ALLOW = []
    settings.PUSHPROXY_ALLOW_PLAINTEXT = False
    body: dict[str, Any] = {
        "imap": {"host": "127.0.0.1", "port": 993, "username": ADDRESS, "password": PASSWORD},
        "endpoints": {
            "newMail": {"url": "https://127.0.0.1/n"},
            "reconnect": {"url": "https://127.0.0.1/r"},
        },
        "clientId": "phone",
    }
    change(body)
    with egress.watching() as attempts:
        answer = client.post(URL, data=json.dumps(body), content_type="application/json")
    assert answer.status_code == HTTPStatus.UNPROCESSABLE_ENTITY
    assert answer.json()["code"] == code
    assert PushSubscription.objects.count() == 0
    assert attempts == []


def _valid_body() -> dict[str, Any]:
    return {
        "imap": {
            "host": "imap.example.org",
            "port": 993,
            "security": "tls",
            "username": ADDRESS,
            "password": PASSWORD,
        },
        "endpoints": {
            "newMail": {"url": "https://push.example.net/n"},
            "reconnect": {"url": "https://push.example.net/r"},
        },
        "clientId": "phone",
    }


BAD_BODIES: dict[str, tuple[Callable[[dict[str, Any]], Any], str]] = {
    # name: (how the valid body is spoiled, the field the answer must name)
    "array": (lambda body: [body], "non_field_errors"),
    "no-imap": (lambda body: body.pop("imap") and body, "imap"),
    "no-password": (lambda body: body["imap"].pop("password") and body, "imap"),
    "number-password": (lambda body: body["imap"].update(password=123456) or body, "imap"),
    "long-password": (lambda body: body["imap"].update(password="x" * 1025) or body, "imap"),
    "nul-username": (lambda body: body["imap"].update(username="a\x00b") or body, "imap"),
    "unknown-key": (lambda body: body.update(extra=1) or body, "extra"),
    "unknown-imap-key": (lambda body: body["imap"].update(tls=True) or body, "imap"),
    "port-zero": (lambda body: body["imap"].update(port=0) or body, "imap"),
    "port-too-big": (lambda body: body["imap"].update(port=70000) or body, "imap"),
    "security-ssl": (lambda body: body["imap"].update(security="ssl") or body, "imap"),
    "host-not-a-name": (lambda body: body["imap"].update(host="bad host!") or body, "imap"),
    "no-client-id": (lambda body: body.pop("clientId") and body, "clientId"),
    "blank-client-id": (lambda body: body.update(clientId="") or body, "clientId"),
    "url-not-text": (
        lambda body: body["endpoints"]["newMail"].update(url=["https://x/"]) or body,
        "endpoints",
    ),
    "bad-keys": (
        lambda body: (
            body["endpoints"]["newMail"].update(keys={"p256dh": "AAAA", "auth": "AAAA"}) or body
        ),
        "endpoints",
    ),
    "keys-and-simplepush": (
        lambda body: (
            body["endpoints"]["reconnect"].update(keys=UserAgent().keys(), format="simplepush")
            or body
        ),
        "endpoints",
    ),
}


@pytest.mark.parametrize("case", BAD_BODIES, ids=list(BAD_BODIES))
def test_a_malformed_body_is_400_invalid_naming_the_field_and_changes_nothing(
    client: Client, push_settings: Any, case: str
) -> None:
    from tests.fakes import egress

    spoil, field = BAD_BODIES[case]
    body = spoil(_valid_body())
    with egress.watching() as attempts:
        answer = client.post(URL, data=json.dumps(body), content_type="application/json")

    assert answer.status_code == HTTPStatus.BAD_REQUEST
    assert answer.json()["code"] == "invalid"
    assert field in answer.json()["fields"]
    assert PASSWORD not in answer.content.decode()
    assert PushSubscription.objects.count() == 0
    assert attempts == []


def test_a_body_that_is_not_json_is_400_and_changes_nothing(
    client: Client, push_settings: Any
) -> None:
    answer = client.post(URL, data="{not json", content_type="application/json")

    assert answer.status_code == HTTPStatus.BAD_REQUEST
    assert answer.json()["code"] == "parse_error"
    assert PushSubscription.objects.count() == 0
