"""Settings come from the environment, strictly (STYLE.md section 3)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from portal import settings as portal_settings

BASE_DIR = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("1", True), ("TRUE", True), ("on", True), ("0", False), ("false", False), ("", False)],
)
def test_env_bool_reads_the_accepted_spellings(
    monkeypatch: pytest.MonkeyPatch, raw: str, expected: bool
) -> None:
    monkeypatch.setenv("PORTAL_X", raw)

    assert portal_settings.env_bool("PORTAL_X") is expected


@pytest.mark.parametrize("raw", ["yes", "enabled", "2"])
def test_env_bool_refuses_other_words_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, raw: str
) -> None:
    monkeypatch.setenv("PORTAL_X", raw)

    with pytest.raises(ImproperlyConfigured, match="PORTAL_X"):
        portal_settings.env_bool("PORTAL_X")


def test_env_networks_refuses_a_non_network(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORTAL_TRUSTED_PROXIES", "10.0.0.0/8, proxy.example")

    with pytest.raises(ImproperlyConfigured, match="PORTAL_TRUSTED_PROXIES"):
        portal_settings.env_networks("PORTAL_TRUSTED_PROXIES")


def test_env_secret_reads_the_file_variant(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    secret_file = tmp_path / "seal"
    secret_file.write_text("s3cret\n")
    monkeypatch.setenv("PUSHPROXY_SEAL_KEY_FILE", str(secret_file))
    monkeypatch.delenv("PUSHPROXY_SEAL_KEY", raising=False)

    assert portal_settings.env_secret("PUSHPROXY_SEAL_KEY") == "s3cret"


def test_env_secret_refuses_both_forms(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUSHPROXY_SEAL_KEY", "a")
    monkeypatch.setenv("PUSHPROXY_SEAL_KEY_FILE", "/nonexistent")

    with pytest.raises(ImproperlyConfigured, match="not both"):
        portal_settings.env_secret("PUSHPROXY_SEAL_KEY")


def test_database_url_reads_postgres_form() -> None:
    config = portal_settings.database_from_url(
        "postgres://mail%40portal:p%2Fw@db.example:6543/portal?sslmode=require"
    )

    assert config["ENGINE"] == "django.db.backends.postgresql"
    assert (config["NAME"], config["USER"], config["PASSWORD"]) == ("portal", "mail@portal", "p/w")
    assert (config["HOST"], config["PORT"]) == ("db.example", "6543")
    assert config["OPTIONS"] == {"connect_timeout": 5, "sslmode": "require"}


def test_database_url_reads_absolute_sqlite_form(tmp_path: Path) -> None:
    config = portal_settings.database_from_url(f"sqlite:///{tmp_path}/db.sqlite3")

    assert config["ENGINE"] == "django.db.backends.sqlite3"
    assert config["NAME"] == f"{tmp_path}/db.sqlite3"
    assert config["OPTIONS"]["transaction_mode"] == "IMMEDIATE"


@pytest.mark.parametrize("url", ["mysql://root@localhost/x", "postgres://host:5432/", "sqlite://"])
def test_database_url_refuses_unusable_forms(url: str) -> None:
    with pytest.raises(ImproperlyConfigured, match="DATABASE_URL"):
        portal_settings.database_from_url(url)


def run_manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PORTAL_", "PUSHPROXY_", "MAILBOX_"))
    }
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=BASE_DIR,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_production_settings_pass_deploy_check() -> None:
    # RELIABILITY.md check 27: no security warning with an https origin.
    result = run_manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        env={
            "PORTAL_BASE_URL": "https://portal.example.net",
            "PORTAL_ALLOWED_HOSTS": "portal.example.net",
            "SECRET_KEY": "x" * 20 + "-deploy-check-key-with-enough-entropy-0123456789",
        },
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_typo_in_environment_fails_at_start_naming_the_variable() -> None:
    result = run_manage("check", env={"PORTAL_DEBUG": "yes"})

    assert result.returncode != 0
    assert "PORTAL_DEBUG" in result.stderr


def test_suggestion_source_address_must_be_an_address() -> None:
    result = run_manage("check", env={"PORTAL_SUGGESTION_SOURCE_ADDRESS": "eth0"})

    assert result.returncode != 0
    assert "PORTAL_SUGGESTION_SOURCE_ADDRESS" in result.stderr


def test_an_empty_suggestion_user_agent_keeps_the_default() -> None:
    result = run_manage(
        "shell",
        "-c",
        "from django.conf import settings; print(settings.SUGGESTION_USER_AGENT)",
        env={"PORTAL_SUGGESTION_USER_AGENT": "", "PORTAL_BASE_URL": "https://p.example"},
    )

    assert result.stdout.strip().splitlines()[-1] == "mailportal-suggestions/1 (+https://p.example)"
