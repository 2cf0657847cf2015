"""Tests for the import_providers and export_providers management commands."""

from __future__ import annotations

import json
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import ManagementUtility, call_command
from django.core.management.base import CommandError

from providers.models import Provider, SuggestionClient

DEMO_FILE = Path(__file__).resolve().parents[2] / "deploy" / "demo-providers.json"

pytestmark = pytest.mark.django_db


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_import_providers_prints_a_one_line_summary() -> None:
    first = run("import_providers", str(DEMO_FILE))
    second = run("import_providers", str(DEMO_FILE))

    assert first == "providers: 1 created, 0 updated, 0 unchanged; suggestion clients: +2 -0\n"
    assert second == "providers: 0 created, 0 updated, 1 unchanged; suggestion clients: +0 -0\n"


def test_import_providers_fails_naming_the_field_and_imports_nothing(tmp_path: Path) -> None:
    catalog = json.loads(DEMO_FILE.read_text(encoding="utf-8"))
    catalog["providers"][0]["incoming"][0]["port"] = 70000
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(catalog), encoding="utf-8")

    with pytest.raises(CommandError) as caught:
        run("import_providers", str(bad))

    assert str(caught.value) == (
        "providers[0] (demo): incoming[0].port: Ensure this value is less than or equal to 65535."
    )
    assert not Provider.objects.exists()
    assert not SuggestionClient.objects.exists()


def test_import_providers_fails_on_a_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.json"

    with pytest.raises(CommandError, match=r"missing\.json: cannot read the file"):
        run("import_providers", str(missing))


def test_import_providers_fails_on_invalid_json(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('{"providers": [', encoding="utf-8")

    with pytest.raises(CommandError, match=r"broken\.json: not valid JSON: .* line 1 column 16"):
        run("import_providers", str(broken))


def test_import_providers_exits_non_zero_with_the_message_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("not json", encoding="utf-8")

    with pytest.raises(SystemExit) as exited:
        ManagementUtility(["manage.py", "import_providers", str(broken)]).execute()

    assert exited.value.code == 1
    assert "broken.json: not valid JSON" in capsys.readouterr().err


def test_export_providers_prints_the_demo_file_after_importing_it() -> None:
    run("import_providers", str(DEMO_FILE))

    assert run("export_providers") == DEMO_FILE.read_text(encoding="utf-8")


def test_export_providers_writes_the_output_file_keeping_non_ascii(tmp_path: Path) -> None:
    catalog = json.loads(DEMO_FILE.read_text(encoding="utf-8"))
    catalog["providers"][0]["name"] = "Bücher Post"
    source = tmp_path / "source.json"
    source.write_text(json.dumps(catalog), encoding="utf-8")
    run("import_providers", str(source))
    output = tmp_path / "export.json"

    printed = run("export_providers", "--output", str(output))

    assert printed == f"exported 1 providers to {output}\n"
    text = output.read_text(encoding="utf-8")
    assert '"name": "Bücher Post"' in text
    assert json.loads(text) == catalog


def test_purge_suggestion_stats_reports_the_rows_it_deleted() -> None:
    from datetime import timedelta

    from django.utils import timezone

    from providers.models import SuggestionStat, hour_of

    run("import_providers", str(DEMO_FILE))
    provider = Provider.objects.get()
    now = hour_of(timezone.now())
    SuggestionStat.objects.create(provider=provider, hour=now - timedelta(days=3))
    SuggestionStat.objects.create(provider=provider, hour=now)

    assert run("purge_suggestion_stats", "--days", "2") == "1 hourly suggestion counters deleted\n"
    assert SuggestionStat.objects.count() == 1
    with pytest.raises(CommandError, match="--days"):
        run("purge_suggestion_stats", "--days", "-1")
