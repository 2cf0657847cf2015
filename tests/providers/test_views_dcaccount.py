"""POST /dcaccount/<token> and /new_email?t=: what Delta Chat gets (specs/qr.md; checks 8, 9)."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from http import HTTPStatus
from typing import Any
from urllib.error import HTTPError
from urllib.request import Request, urlopen

import pytest
from django.core.cache import cache
from django.db import connection
from django.utils import timezone

from accounts.models import AccountStatus, CreatedVia, MailAccount, MailboxState
from providers.models import OnboardingToken
from providers.services import onboarding


def post(client: Any, secret: str, *, form: str = "path", **extra: Any) -> Any:
    url = f"/dcaccount/{secret}" if form == "path" else f"/new_email?t={secret}"
    return client.post(url, data=b"", content_type="", **extra)


def refusal(response: Any) -> dict[str, str]:
    body: dict[str, str] = response.json()
    assert body["reason"].strip(), body
    return body


@pytest.fixture(autouse=True)
def _fresh_limits() -> None:
    cache.clear()  # rate-limit counters of earlier tests (Redis under CI)


@pytest.mark.django_db
@pytest.mark.parametrize("form", ["path", "query"])
def test_dcaccount_creates_an_account_and_answers_what_delta_chat_reads(
    client: Any, make_token: Callable[..., Any], form: str
) -> None:
    issued = make_token(max_uses=3, prefix="tmp.", account_lifetime=timedelta(days=2))

    response = post(client, issued.secret, form=form)

    assert response.status_code == HTTPStatus.OK
    assert response["Content-Type"] == "application/json"
    assert "no-store" in response["Cache-Control"]
    body = response.json()
    assert set(body) == {"email", "password", "expiry", "ttl"}
    assert body["expiry"] == "2d" and body["ttl"] == 2 * 86400
    local, _, domain = body["email"].partition("@")
    assert domain == "example.org" and local.startswith("tmp.") and len(local) == 14
    account = MailAccount.objects.get(local_part=local)
    assert account.created_via == CreatedVia.QR_TOKEN == onboarding.CREATED_VIA
    assert account.onboarding_token_id == issued.token.pk
    assert account.status == AccountStatus.ACTIVE
    assert account.mailbox_state == MailboxState.READY
    assert account.expires_at is not None
    assert account.expires_at - account.created_at == pytest.approx(
        timedelta(days=2), abs=timedelta(seconds=5)
    )
    assert len(body["password"]) >= 20
    issued.token.refresh_from_db()
    assert issued.token.use_count == 1
    assert issued.secret not in response.content.decode()


@pytest.mark.django_db
def test_dcaccount_answers_never_and_no_ttl_for_permanent_accounts(
    client: Any, make_token: Callable[..., Any]
) -> None:
    issued = make_token()

    body = post(client, issued.secret).json()

    assert body["expiry"] == "never" and body["ttl"] is None
    assert MailAccount.objects.get(local_part=body["email"].split("@")[0]).expires_at is None


def _expired(make_token: Callable[..., Any]) -> Any:
    issued = make_token(max_uses=5)
    OnboardingToken.objects.filter(pk=issued.token.pk).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    return issued


def _revoked(make_token: Callable[..., Any]) -> Any:
    issued = make_token(max_uses=5)
    onboarding.revoke_token(token=issued.token)
    return issued


def _used_up(make_token: Callable[..., Any]) -> Any:
    issued = make_token(max_uses=2)
    OnboardingToken.objects.filter(pk=issued.token.pk).update(use_count=2)
    return issued


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("case", "status", "code"),
    [
        ("unknown", HTTPStatus.FORBIDDEN, "token_unknown"),
        ("revoked", HTTPStatus.FORBIDDEN, "token_revoked"),
        ("expired", HTTPStatus.GONE, "token_expired"),
        ("used up", HTTPStatus.GONE, "token_used_up"),
    ],
)
@pytest.mark.parametrize("form", ["path", "query"])
def test_each_token_error_has_its_own_code_and_creates_nothing(
    client: Any, make_token: Callable[..., Any], case: str, status: int, code: str, form: str
) -> None:
    make = {"revoked": _revoked, "expired": _expired, "used up": _used_up}.get(case)
    if make is None:
        make_token()  # a real token exists; ours is another
        secret = onboarding.new_secret()
    else:
        secret = make(make_token).secret
    before = list(OnboardingToken.objects.values_list("pk", "use_count"))

    response = post(client, secret, form=form)

    assert response.status_code == status
    body = refusal(response)
    assert body["code"] == code
    assert secret not in response.content.decode()
    assert MailAccount.objects.count() == 0
    assert list(OnboardingToken.objects.values_list("pk", "use_count")) == before


@pytest.mark.django_db
def test_get_on_the_code_url_changes_nothing(client: Any, make_token: Callable[..., Any]) -> None:
    issued = make_token()

    response = client.get(f"/dcaccount/{issued.secret}")
    response_mailadm = client.get(f"/new_email?t={issued.secret}")

    assert response.status_code == response_mailadm.status_code == HTTPStatus.METHOD_NOT_ALLOWED
    assert response["Allow"] == "POST"
    assert refusal(response)["code"] == "method_not_allowed"
    issued.token.refresh_from_db()
    assert issued.token.use_count == 0 and MailAccount.objects.count() == 0


@pytest.mark.django_db
def test_closed_provider_refuses_with_reg_disabled_and_keeps_the_use(
    client: Any, make_token: Callable[..., Any]
) -> None:
    issued = make_token(max_uses=2)
    provider = issued.token.domain.provider
    provider.registration = "closed"
    provider.save()

    response = post(client, issued.secret)

    assert response.status_code == HTTPStatus.FORBIDDEN
    assert refusal(response)["code"] == "reg_disabled"
    issued.token.refresh_from_db()
    assert issued.token.use_count == 0 and MailAccount.objects.count() == 0


@pytest.mark.django_db
def test_provider_requiring_approval_refuses_with_approval_required(
    client: Any, make_token: Callable[..., Any]
) -> None:
    issued = make_token(max_uses=2)
    provider = issued.token.domain.provider
    provider.require_approval = True
    provider.save()

    response = post(client, issued.secret)

    assert response.status_code == HTTPStatus.FORBIDDEN
    assert refusal(response)["code"] == "approval_required"
    assert MailAccount.objects.count() == 0


@pytest.mark.django_db
def test_failed_account_creation_gives_the_use_back(
    client: Any, make_token: Callable[..., Any], settings: Any, tmp_path: Any
) -> None:
    # A mail server that refuses every change: the command backend running `false`.
    settings.MAILBOX_BACKEND = "command"
    settings.MAILBOX_COMMAND = "false"
    issued = make_token(max_uses=1)

    response = post(client, issued.secret)

    assert response.status_code == HTTPStatus.SERVICE_UNAVAILABLE
    assert refusal(response)["code"] == "mailbox_failed"
    issued.token.refresh_from_db()
    assert issued.token.use_count == 0
    assert MailAccount.objects.count() == 0


@pytest.mark.django_db
def test_dcaccount_answers_429_with_retry_after_over_the_limit(
    client: Any, make_token: Callable[..., Any], settings: Any
) -> None:
    settings.DCACCOUNT_RATE = "3/h"
    issued = make_token(max_uses=10)

    statuses = [post(client, issued.secret).status_code for _ in range(3)]
    limited = post(client, issued.secret)

    assert statuses == [HTTPStatus.OK] * 3
    assert limited.status_code == HTTPStatus.TOO_MANY_REQUESTS
    assert refusal(limited)["code"] == "rate_limited"
    assert 0 < int(limited["Retry-After"]) <= 3600
    other = post(client, issued.secret, REMOTE_ADDR="192.0.2.7")
    assert other.status_code == HTTPStatus.OK
    issued.token.refresh_from_db()
    assert issued.token.use_count == 4


@pytest.mark.django_db
def test_dcaccount_fails_closed_when_the_rate_limit_cache_is_down(
    client: Any, make_token: Callable[..., Any], cache_down: None
) -> None:
    issued = make_token()

    response = post(client, issued.secret)

    assert response.status_code == HTTPStatus.SERVICE_UNAVAILABLE
    assert refusal(response)["code"] == "ratelimit_unavailable"
    assert response["Retry-After"]
    assert MailAccount.objects.count() == 0


# ----- against the live server: concurrency (check 8), Dovecot, logs and dump (check 9) ------


def _http_post(url: str) -> tuple[int, dict[str, Any]]:
    request = Request(url, data=b"", method="POST")  # noqa: S310 (Delta Chat: empty body)
    try:
        with urlopen(request, timeout=60) as response:  # noqa: S310 (our own server)
            return response.status, json.loads(response.read())
    except HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _need_postgresql() -> None:
    if connection.vendor != "postgresql":
        from tests.conftest import need_service

        need_service("PostgreSQL", "the race is checked on PostgreSQL (DATABASE_URL)")


@pytest.mark.services
@pytest.mark.parametrize("max_uses", [10, 5])
def test_fifty_concurrent_posts_never_pass_max_uses(
    live_server: Any, make_token: Callable[..., Any], settings: Any, max_uses: int
) -> None:
    _need_postgresql()
    settings.DCACCOUNT_RATE = "1000/h"
    issued = make_token(max_uses=max_uses)
    barrier = threading.Barrier(50)
    results: list[tuple[int, dict[str, Any]]] = []
    lock = threading.Lock()

    def send(index: int) -> None:
        form = "/dcaccount/" + issued.secret if index % 2 else "/new_email?t=" + issued.secret
        barrier.wait()
        result = _http_post(live_server.url + form)
        with lock:
            results.append(result)

    threads = [threading.Thread(target=send, args=(index,)) for index in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    statuses = Counter(status for status, _ in results)
    assert statuses == {HTTPStatus.OK: max_uses, HTTPStatus.GONE: 50 - max_uses}
    assert {body["code"] for status, body in results if status != HTTPStatus.OK} == {
        "token_used_up"
    }
    addresses = {body["email"] for status, body in results if status == HTTPStatus.OK}
    assert len(addresses) == max_uses
    issued.token.refresh_from_db()
    linked = MailAccount.objects.filter(onboarding_token=issued.token)
    assert issued.token.use_count == max_uses == linked.count() == MailAccount.objects.count()
    assert {account.address for account in linked} == addresses


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_accounts_made_by_a_code_log_in_to_dovecot(
    dovecot: Any, client: Any, make_token: Callable[..., Any]
) -> None:
    from imapclient import IMAPClient

    from accounts.dovecot import LOOPBACK

    issued = make_token(max_uses=2, prefix="dc.")
    answers = [post(client, issued.secret).json() for _ in range(2)]

    for answer in answers:
        imap = IMAPClient(LOOPBACK, port=dovecot.port, ssl=False, timeout=15)
        try:
            imap.plain_login(answer["email"], answer["password"])
            assert imap.select_folder("INBOX")[b"EXISTS"] == 0
        finally:
            imap.logout()


@pytest.mark.services
def test_the_token_is_in_no_log_line_of_the_portal_or_its_access_log(
    portal_server: Callable[..., Any], make_token: Callable[..., Any]
) -> None:
    issued = make_token(max_uses=1)
    unknown = onboarding.new_secret()
    server = portal_server(
        GUNICORN_CMD_ARGS="--access-logfile - --logger-class portal.redact.GunicornLogger"
    )
    results = [
        _http_post(f"{server.url}/new_email?t={issued.secret}"),
        _http_post(f"{server.url}/dcaccount/{issued.secret}"),
        _http_post(f"{server.url}/dcaccount/{unknown}"),
        _http_post(f"{server.url}/new_email?t={unknown}&x=1"),
    ]
    server.stop()
    log = server.log.name
    with open(log, encoding="utf-8", errors="replace") as handle:
        text = handle.read()

    assert [status for status, _ in results] == [200, 410, 403, 403]
    assert all(issued.secret not in json.dumps(body) for _, body in results)
    assert issued.secret not in text and unknown not in text
    # The lines are there, with the token masked: the access log and Django's request log.
    assert text.count("POST /new_email?t=[redacted]") == 2
    assert "&x=1" in text
    assert text.count("POST /dcaccount/[redacted]") == 2
    assert "Forbidden: /dcaccount/[redacted]" in text


@pytest.mark.services
def test_the_token_is_in_no_line_runserver_prints_in_debug_mode(
    transactional_db: None, make_token: Callable[..., Any], tmp_path: Any
) -> None:
    """`make run` serves with runserver: its request lines and Django's debug console."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from django.conf import settings as django_settings

    from tests.conftest import _free_port, database_url, wait_listening

    issued = make_token(max_uses=1)
    port = _free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url(dict(connection.settings_dict)),
        "PORTAL_BASE_URL": f"http://127.0.0.1:{port}",
        "PORTAL_ALLOWED_HOSTS": "127.0.0.1",
        "PORTAL_DEBUG": "1",
    }
    env.pop("REDIS_URL", None)
    log_path = tmp_path / "runserver.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [sys.executable, "manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"],
            cwd=django_settings.BASE_DIR,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_listening(server, port, f"runserver; see {log_path}")
        base = f"http://127.0.0.1:{port}"
        statuses = [
            _http_post(f"{base}/dc%61ccount/{issued.secret}")[0],  # routed: it uses the token
            _http_post(f"{base}/dcaccount/{issued.secret}")[0],
            _http_post(f"{base}/new_email?%74={issued.secret}")[0],
        ]
        # runserver writes a request's line after its answer: wait for the third.
        deadline = time.monotonic() + 10
        while log_path.read_text(errors="replace").count('HTTP/1.1"') < 3:
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=15)
    text = log_path.read_text(encoding="utf-8", errors="replace")

    assert statuses == [200, 410, 410]
    assert issued.secret not in text
    assert text.count("POST /dcaccount/[redacted]") == 2  # the escaped one decoded, masked
    assert "POST /new_email?t=[redacted]" in text
    assert "Gone: /dcaccount/[redacted]" in text  # the django logger's console copy


def _pg_dump() -> str:
    import os
    import shutil
    import subprocess

    _need_postgresql()
    if shutil.which("pg_dump") is None:
        from tests.conftest import need_service

        need_service("pg_dump", "postgresql-client is not installed")
    params = connection.settings_dict
    command = [
        "pg_dump", "--data-only",
        "-h", params["HOST"] or "127.0.0.1", "-p", str(params["PORT"] or 5432),
        "-U", params["USER"] or "postgres", params["NAME"],
    ]  # fmt: skip
    env = {**os.environ, "PGPASSWORD": params["PASSWORD"] or ""}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=True, timeout=60)
    return done.stdout


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_the_database_dump_holds_the_tokens_digest_but_never_the_token(
    client: Any, make_token: Callable[..., Any]
) -> None:
    issued = make_token(max_uses=3)
    answer = post(client, issued.secret).json()

    dump = _pg_dump()

    assert issued.token.token_sha256 in dump  # the dump is the real one
    assert answer["email"].split("@")[0] in dump
    assert issued.secret not in dump
    assert answer["password"] not in dump


@pytest.mark.django_db
def test_the_three_autoconfig_forms_delta_chat_tries_answer_for_the_new_address(
    client: Any, make_token: Callable[..., Any], validate_clientconfig: Callable[[bytes], list[str]]
) -> None:
    # After a DCACCOUNT answer Delta Chat has no server hints; it asks these, in order
    # (specs/qr.md), over https with the domain's own host names.
    address = post(client, make_token().secret).json()["email"]

    first = client.get(
        "/mail/config-v1.1.xml", {"emailaddress": address}, HTTP_HOST="autoconfig.example.org"
    )
    second = client.get("/.well-known/autoconfig/mail/config-v1.1.xml", HTTP_HOST="example.org")
    third = client.get("/autodiscover/autodiscover.xml", HTTP_HOST="example.org")

    for response in (first, second, third):
        assert response.status_code == HTTPStatus.OK
        assert response["Content-Type"] == "text/xml; charset=utf-8"
        assert b"imap.example.org" in response.content and b"smtp.example.org" in response.content
    assert validate_clientconfig(first.content) == []
    assert validate_clientconfig(second.content) == []
    assert b"<Type>IMAP</Type>" in third.content


# ----- the OpenAPI schema --------------------------------------------------------------------


def _schema(client: Any) -> dict[str, Any]:
    response = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == HTTPStatus.OK
    schema: dict[str, Any] = response.json()
    return schema


@pytest.mark.parametrize(
    ("path", "parameter", "where"),
    [("/dcaccount/{token}", "token", "path"), ("/new_email", "t", "query")],
)
def test_schema_documents_the_dcaccount_calls(
    client: Any, path: str, parameter: str, where: str
) -> None:
    schema = _schema(client)

    assert set(schema["paths"][path]) == {"post"}
    operation = schema["paths"][path]["post"]
    assert "requestBody" not in operation  # an empty body
    assert [(p["name"], p["in"], p["required"]) for p in operation["parameters"]] == [
        (parameter, where, True)
    ]
    answers = operation["responses"]
    assert set(answers) == {"200", "403", "405", "410", "429", "500", "503"}
    assert answers["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/DCAccountOut"
    }
    for status in set(answers) - {"200"}:
        assert answers[status]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/DCAccountRefusalOut"
        }, status


@pytest.mark.django_db
def test_answers_have_exactly_the_fields_the_schema_names(
    client: Any, make_token: Callable[..., Any]
) -> None:
    components = _schema(client)["components"]["schemas"]
    issued = make_token(max_uses=1)

    # A browser's Accept, which the JSON of the protocol does not depend on.
    made = post(client, issued.secret, HTTP_ACCEPT="text/html,application/xhtml+xml")
    refused = post(client, issued.secret)

    assert made.status_code == HTTPStatus.OK and made["Content-Type"] == "application/json"
    assert set(made.json()) == set(components["DCAccountOut"]["properties"])
    assert set(refusal(refused)) == set(components["DCAccountRefusalOut"]["properties"])
    assert set(components["DCAccountOut"]["required"]) >= {"email", "password"}
