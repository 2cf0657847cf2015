"""accounts.services.registration and .verification: idempotency records, codes, clean-up."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from datetime import timedelta
from http import HTTPStatus
from io import StringIO
from typing import Any
from unittest.mock import ANY

import pytest
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from accounts import cpe3
from accounts.models import AccountStatus, MailAccount, RegistrationRequest, VerificationCode
from accounts.services import registration, verification
from accounts.services.accounts import RegistrationDisabled, create_account
from accounts.services.registration import (
    IdempotencyMismatch,
    InbandRegistration,
    InProgress,
    register_inband,
    request_fingerprint,
)
from accounts.tasks import purge_registrations as purge_task
from portal.errors import InvalidInput
from providers.models import Provider

PASSWORD = "romeo-and-juliet-42"


@pytest.fixture
def provider(make_provider: Callable[..., Provider]) -> Provider:
    return make_provider()


def request(
    username: str = "juliet", password: str = PASSWORD, **fields: Any
) -> InbandRegistration:
    values: dict[str, Any] = {
        "message_id": "abcd",
        "domain": "example.org",
        "origin": "example.org",
        "username": username,
        "third_pids": (("email", f"{username}@capulet.example"),),
        "password": password,
    }
    values.update(fields)
    return InbandRegistration(**values)


def body_of(reg: InbandRegistration) -> dict[str, Any]:
    return {"id": reg.message_id, "payload": {"username": reg.username, "password": reg.password}}


def run(reg: InbandRegistration, key: str = "key-1") -> cpe3.Answer:
    return register_inband(registration=reg, idempotency_key=key, request_body=body_of(reg))


# ----- fingerprint -------------------------------------------------------------------------


def test_request_fingerprint_is_a_keyed_hmac_of_the_canonical_json() -> None:
    body = {"b": 1, "a": {"password": PASSWORD, "y": [1, 2]}}
    reordered = {"a": {"y": [1, 2], "password": PASSWORD}, "b": 1}
    fingerprint = request_fingerprint(body)
    assert fingerprint == request_fingerprint(reordered)
    assert len(fingerprint) == 64 and int(fingerprint, 16) >= 0
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert fingerprint != hashlib.sha256(canonical.encode()).hexdigest()
    changed = {"b": 1, "a": {"password": PASSWORD + "!", "y": [1, 2]}}
    assert request_fingerprint(changed) != fingerprint


def test_request_fingerprint_depends_on_the_secret_key(settings: Any) -> None:
    body = {"password": PASSWORD}
    before = request_fingerprint(body)
    settings.SECRET_KEY = "another-secret-key-for-this-test-only-0123456789"
    assert request_fingerprint(body) != before


# ----- claims ------------------------------------------------------------------------------


def test_register_inband_stores_the_answer_under_the_key(provider: Provider) -> None:
    answer = run(request())
    assert answer.status == HTTPStatus.CREATED
    record = RegistrationRequest.objects.get()
    assert record.key == "key-1"
    assert record.state == RegistrationRequest.State.DONE
    assert record.status_code == HTTPStatus.CREATED
    assert record.response == answer.body
    assert record.request_hash == request_fingerprint(body_of(request()))


def test_register_inband_replays_without_creating(provider: Provider) -> None:
    first = run(request())
    MailAccount.objects.all().delete()
    again = run(request())
    assert (again.status, again.body) == (first.status, first.body)
    assert again.headers == {"Idempotent-Replayed": "true"}
    assert not MailAccount.objects.exists()


def test_register_inband_refuses_the_key_with_another_body(provider: Provider) -> None:
    run(request())
    with pytest.raises(IdempotencyMismatch):
        run(request(password=PASSWORD + "-other"))


def test_register_inband_answers_in_progress_to_a_running_claim(provider: Provider) -> None:
    reg = request()
    RegistrationRequest.objects.create(key="key-1", request_hash=request_fingerprint(body_of(reg)))
    with pytest.raises(InProgress):
        run(reg)
    assert not MailAccount.objects.exists()


def test_register_inband_takes_over_a_claim_abandoned_for_five_minutes(provider: Provider) -> None:
    reg = request()
    record = RegistrationRequest.objects.create(
        key="key-1", request_hash=request_fingerprint(body_of(reg))
    )
    RegistrationRequest.objects.filter(pk=record.pk).update(
        created_at=timezone.now() - registration.STALE_CLAIM - timedelta(seconds=1)
    )
    assert run(reg).status == HTTPStatus.CREATED
    assert RegistrationRequest.objects.get().state == RegistrationRequest.State.DONE


def test_register_inband_stores_a_refusal_and_raises_it(provider: Provider) -> None:
    reg = request(domain="example.net")
    with pytest.raises(RegistrationDisabled):
        run(reg)
    record = RegistrationRequest.objects.get()
    assert record.status_code == HTTPStatus.FORBIDDEN
    assert record.response["payload"]["errID"] == cpe3.REG_DISABLED
    replay = run(reg)
    assert replay.status == HTTPStatus.FORBIDDEN


def test_register_inband_stores_an_input_refusal_and_leaves_nothing_running(
    provider: Provider,
) -> None:
    reg = request(third_pids=(("email", "a@example.net"), ("email", "a@example.net")))
    with pytest.raises(InvalidInput, match="twice"):
        run(reg)
    record = RegistrationRequest.objects.get()
    assert record.state == RegistrationRequest.State.DONE
    assert record.response["payload"]["fields"] == {"payload.thirdPIDs": ANY}


# ----- purge ------------------------------------------------------------------------------


def test_purge_registrations_drops_old_records_and_abandoned_pending_accounts(
    make_provider: Callable[..., Provider],
) -> None:
    make_provider(require_verified_email=True)
    now = timezone.now()
    old = RegistrationRequest.objects.create(key="old", request_hash="0" * 64)
    RegistrationRequest.objects.filter(pk=old.pk).update(created_at=now - timedelta(hours=25))
    RegistrationRequest.objects.create(key="new", request_hash="0" * 64)
    abandoned = _pending("juliet")
    kept = _pending("romeo")
    VerificationCode.objects.filter(third_pid__account=abandoned).update(
        expires_at=now - timedelta(minutes=1)
    )
    result = registration.purge_registrations(now=now)
    assert (result.requests, result.accounts) == (1, 1)
    assert list(RegistrationRequest.objects.values_list("key", flat=True)) == ["new"]
    assert list(MailAccount.objects.values_list("local_part", flat=True)) == [kept.local_part]


def test_purge_registrations_drops_a_pending_account_whose_code_was_never_stored(
    make_provider: Callable[..., Provider],
) -> None:
    make_provider(require_verified_email=True)
    now = timezone.now()
    account = _pending("juliet")
    VerificationCode.objects.all().delete()  # a crash between the account and its code
    young = _pending("romeo")
    VerificationCode.objects.filter(third_pid__account=young).delete()
    MailAccount.objects.filter(pk=account.pk).update(created_at=now - timedelta(minutes=16))

    result = registration.purge_registrations(now=now)

    assert result.accounts == 1
    assert list(MailAccount.objects.values_list("local_part", flat=True)) == ["romeo"]


def _pending(name: str) -> MailAccount:
    account = create_account(
        domain="example.org",
        local_part=name,
        password=PASSWORD,
        created_via="api",
        third_pids=[("email", f"{name}@capulet.example")],
        status=AccountStatus.PENDING,
    )
    verification.issue_code(third_pid=account.third_pids.get())
    return account


def test_purge_registrations_command_reports_counts(provider: Provider) -> None:
    out = StringIO()
    call_command("purge_registrations", stdout=out)
    assert out.getvalue().strip() == "purged 0 registration records, 0 pending accounts"


def test_purge_registrations_task_calls_the_service(provider: Provider) -> None:
    old = RegistrationRequest.objects.create(key="old", request_hash="0" * 64)
    RegistrationRequest.objects.filter(pk=old.pk).update(
        created_at=timezone.now() - timedelta(days=2)
    )
    assert purge_task.apply().get() == {"requests": 1, "accounts": 0}


# ----- verification codes ------------------------------------------------------------------


def test_issue_code_stores_only_a_keyed_hash_with_expiry(
    make_provider: Callable[..., Provider],
) -> None:
    make_provider()
    account = _pending("juliet")
    pid = account.third_pids.get()
    code = verification.issue_code(third_pid=pid)
    assert len(code) == 6 and code.isdigit()
    stored = VerificationCode.objects.get()
    assert stored.code_hash == verification.code_hash(pid.pk, code)
    assert stored.code_hash != hashlib.sha256(code.encode()).hexdigest()
    assert code not in stored.code_hash
    assert stored.expires_at - timezone.now() <= verification.CODE_LIFETIME


def test_confirm_code_counts_every_try_and_stops_at_five(
    make_provider: Callable[..., Provider],
) -> None:
    make_provider()
    pid = _pending("juliet").third_pids.get()
    code = verification.issue_code(third_pid=pid)
    wrong = "000000" if code != "000000" else "111111"
    for _ in range(verification.MAX_ATTEMPTS):
        with pytest.raises(verification.VerificationFailed):
            verification.confirm_code(third_pid=pid, code=wrong)
    with pytest.raises(verification.VerificationExpired):
        verification.confirm_code(third_pid=pid, code=code)
    assert VerificationCode.objects.get().attempts == verification.MAX_ATTEMPTS


@pytest.mark.django_db(transaction=True)
def test_concurrent_guesses_never_exceed_five_tries(make_provider: Callable[..., Provider]) -> None:
    make_provider()
    pid = _pending("juliet").third_pids.get()
    code = verification.issue_code(third_pid=pid)
    wrong = "000000" if code != "000000" else "111111"
    outcomes: list[str] = []
    barrier = threading.Barrier(20)

    def guess() -> None:
        barrier.wait()
        try:
            verification.confirm_code(third_pid=pid, code=wrong)
        except verification.VerificationFailed:
            outcomes.append("failed")
        except verification.VerificationExpired:
            outcomes.append("expired")
        finally:
            connection.close()

    threads = [threading.Thread(target=guess) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["expired"] * 15 + ["failed"] * 5
    assert VerificationCode.objects.get().attempts == verification.MAX_ATTEMPTS
