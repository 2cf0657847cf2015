"""Schemathesis against /api/schema/ on the live portal: RELIABILITY.md check 25.

The portal runs under gunicorn on PostgreSQL with its own Redis (a private redis-server),
with a hosted provider, an onboarding token and an account in the database, so that the
operations reach their real code paths. `st run` (the Schemathesis CLI, as the check
names it) generates examples from the schema, coverage cases, fuzzed and negative data, and
stateful sequences through the schema's links, and applies the four checks of the plan:
not_a_server_error, status_code_conformance, response_schema_conformance and
negative_data_rejection. Bounded (MAX_EXAMPLES per operation, one worker, a fixed seed) so
the suite stays within CI's time; the report of a failing run is in the assertion message.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from accounts.services.accounts import create_account
from providers.models import OnboardingToken, Provider
from providers.services import onboarding
from tests.conftest import PortalServer, PrivateRedis

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]

CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
)
MAX_EXAMPLES = 100
SEED = 20261201
PASSWORD = "Balcony-42-night"
HOOKS = Path(__file__).with_name("schemathesis_hooks.py")


def log_in(base: str) -> tuple[str, str]:
    """Log juliet in through the API: her session cookie ("name=value") and CSRF value."""
    import http.cookiejar
    import urllib.request

    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))

    def post(path: str, body: dict[str, str]) -> dict[str, str]:
        request = urllib.request.Request(  # noqa: S310 - the live test server
            base + path, json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        with opener.open(request, timeout=30) as answer:
            parsed: dict[str, str] = json.loads(answer.read())
            return parsed

    token = post("/api/v1/account/login-prep", {})["loginToken"]
    csrf = post(
        "/api/v1/account/login",
        {"loginToken": token, "username": "juliet@example.org", "password": PASSWORD},
    )["csrfToken"]
    (session,) = [c for c in jar if c.name.endswith("mailportal_session")]
    return f"{session.name}={session.value}", csrf


def test_schemathesis_finds_no_failure_in_the_api_schema(
    portal_server: Callable[..., PortalServer],
    private_redis: PrivateRedis,
    make_provider: Callable[..., Provider],
    tmp_path: Path,
) -> None:
    provider = make_provider(tos_url="https://example.org/tos", privacy_url="https://example.org/")
    onboarding.issue_token(
        token=OnboardingToken(domain=provider.domains.get(), name="fuzz", max_uses=1000),
        valid_for=None,
    )
    create_account(domain="example.org", local_part="juliet", password=PASSWORD, created_via="api")
    server = portal_server(REDIS_URL=private_redis.url, PORTAL_TRUSTED_PROXIES="127.0.0.1/32")
    cookie, csrf = log_in(server.url)
    schemathesis = Path(sys.executable).with_name("st")

    run = subprocess.run(
        [
            str(schemathesis),
            "run",
            f"{server.url}/api/schema/",
            "--url",
            server.url,
            "--checks",
            ",".join(CHECKS),
            "--max-examples",
            str(MAX_EXAMPLES),
            "--seed",
            str(SEED),
            "--workers",
            "1",
            "--request-timeout",
            "20",
            "--no-color",
            # The account API as its owner (the session's cookie and CSRF value). Logout
            # would end that session for every later case: it is left out here and tested
            # in tests/accounts/test_api_account.py.
            "--header",
            f"Cookie: {cookie}",
            "--header",
            f"X-CSRF-Token: {csrf}",
            "--exclude-path",
            "/api/v1/account/logout",
        ],
        cwd=tmp_path,
        env={**os.environ, "SCHEMATHESIS_HOOKS": str(HOOKS)},
        capture_output=True,
        text=True,
        timeout=900,
    )

    report = run.stdout[-12000:] + run.stderr[-3000:]
    assert run.returncode == 0, report
    counts = re.search(r"(\d+) generated, (\d+) passed", run.stdout)
    assert counts is not None, report
    generated, passed = map(int, counts.groups())
    assert generated == passed >= 1000, report  # it really ran, and everything passed
    assert "Tested: 17" in run.stdout, report  # every operation but Logout
