"""deploy/: the systemd units, the example environment and the nginx example stay true.

RELIABILITY.md check 27 (deployment configuration): the example production environment
passes `manage.py check --deploy --fail-level WARNING` with DEBUG off, argon2id hashing at
or above the plan's parameters and django-ratelimit's cache check on. The units are
checked by systemd's own verifier (paths pointed at this checkout), every command they start
exists and accepts their arguments, and the nginx example replaces X-Forwarded-For rather
than passing a client's value on.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.core.management import get_commands, load_command_class

from tests.conftest import need_service

ROOT = Path(django_settings.BASE_DIR)
UNITS = ROOT / "deploy" / "systemd"
ENV_EXAMPLE = ROOT / "deploy" / "env.example"
NGINX = ROOT / "deploy" / "nginx"
SERVICES = sorted(UNITS.glob("*.service"))


def example_environment() -> dict[str, str]:
    """deploy/env.example as a dict (empty values left out), with a real secret key."""
    values = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, value = line.partition("=")
            if value:
                values[name] = value
    values["SECRET_KEY"] = "deploy-test-" + "k" * 50
    return values


def run_with(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PORTAL_", "PUSHPROXY_", "MAILBOX_", "DATABASE_", "REDIS_"))
    }
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def exec_start(unit: Path) -> list[str]:
    (line,) = [x for x in unit.read_text().splitlines() if x.startswith("ExecStart=")]
    return shlex.split(line.removeprefix("ExecStart="))


# ----- check 27 with the example production environment -----------------------------------


def test_the_example_production_environment_passes_the_deploy_check() -> None:
    result = run_with(
        example_environment(), "manage.py", "check", "--deploy", "--fail-level", "WARNING"
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_production_settings_hash_with_argon2id_and_check_the_rate_limit_cache() -> None:
    script = (
        "import json; from django.conf import settings as s;"
        "from django.contrib.auth.hashers import get_hasher;"
        "h = get_hasher();"
        "print(json.dumps({'debug': s.DEBUG, 'hasher': h.algorithm, 'm': h.memory_cost,"
        "'t': h.time_cost, 'silenced': s.SILENCED_SYSTEM_CHECKS,"
        "'admin_rates': [s.ADMIN_LOGIN_FAILURES_PER_IP_RATE,"
        " s.ADMIN_LOGIN_FAILURES_PER_ACCOUNT_RATE]}))"
    )
    result = run_with(example_environment(), "manage.py", "shell", "-c", script)
    assert result.returncode == 0, result.stderr
    facts = json.loads(result.stdout.strip().splitlines()[-1])

    assert facts["debug"] is False
    assert facts["hasher"] == "argon2"  # Django's Argon2PasswordHasher is argon2id
    assert facts["m"] >= 19_456 and facts["t"] >= 2  # KiB, passes (RELIABILITY.md check 27)
    # E003 (the cache is not shared) is on with Redis; W001 is silenced with its reason in
    # portal/settings.py (Django's RedisCache increments atomically).
    assert facts["silenced"] == ["django_ratelimit.W001"]
    assert all(rate for rate in facts["admin_rates"])


def test_the_example_environment_names_every_variable_architecture_md_lists() -> None:
    table = (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8").split("## Configuration")[1]
    table = table.split("\n\n")[1]
    listed = set(re.findall(r"^\| `([A-Z_]+)`", table, re.MULTILINE))
    listed |= set(re.findall(r"`, `([A-Z_]+)` \|", table))
    example = set(re.findall(r"^([A-Z_]+)=", ENV_EXAMPLE.read_text(), re.MULTILINE))

    assert listed - example - {"PORTAL_ADMIN_PASSWORD"} == set()


# ----- systemd units ---------------------------------------------------------------------------


def test_systemd_verifies_every_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        need_service("systemd-analyze", "not installed (apt-get install systemd)")
    env_file = tmp_path / "env"
    env_file.write_text("PORTAL_DEBUG=0\n")
    copies = tmp_path / "units"
    copies.mkdir()
    for unit in UNITS.iterdir():
        text = unit.read_text().replace("/srv/mailportal", str(ROOT))
        (copies / unit.name).write_text(text.replace("/etc/mailportal/env", str(env_file)))
    names = [p.name for p in SERVICES if not p.name.endswith("@.service")]
    names += ["mailportal-monitor@mon-1.service", "mailportal.target"]

    result = subprocess.run(
        [analyze, "verify", "--man=no", *[str(copies / name) for name in names]],
        cwd=copies,
        capture_output=True,
        text=True,
        timeout=60,
    )

    ours = [line for line in result.stderr.splitlines() if "mailportal" in line]
    assert ours == [], result.stderr


@pytest.mark.parametrize("unit", SERVICES, ids=lambda p: p.name)
def test_every_unit_runs_as_the_portal_user_with_the_environment_file(unit: Path) -> None:
    text = unit.read_text()

    assert "User=mailportal" in text
    assert "EnvironmentFile=/etc/mailportal/env" in text
    assert "WorkingDirectory=/srv/mailportal" in text
    assert "ReadWritePaths=/srv/mailportal/var" in text
    assert "PartOf=mailportal.target" in text


def test_the_target_wants_every_unit_but_the_monitor_template() -> None:
    wants = (UNITS / "mailportal.target").read_text().split("Wants=")[1].split("\n")[0].split()

    assert sorted(wants) == sorted(p.name for p in SERVICES if "@" not in p.name)


def test_the_monitor_template_starts_run_push_monitor_with_its_instance_name() -> None:
    argv = exec_start(UNITS / "mailportal-monitor@.service")

    assert argv[:3] == ["/srv/mailportal/.venv/bin/python", "manage.py", "run_push_monitor"]
    assert "run_push_monitor" in get_commands()
    parser = load_command_class(get_commands()["run_push_monitor"], "run_push_monitor")
    options = parser.create_parser("manage.py", "run_push_monitor").parse_args(
        [a.replace("%i", "mon-1") for a in argv[3:]]
    )
    assert options.worker_id == "mon-1"


def test_systemd_waits_longer_for_a_monitor_than_its_own_shutdown_alarm() -> None:
    # systemd's SIGKILL would otherwise cut the logouts and reconnect pushes short.
    text = (UNITS / "mailportal-monitor@.service").read_text()
    [stop] = re.findall(r"^TimeoutStopSec=(\d+)$", text, re.MULTILINE)
    shutdown = int(example_environment()["PUSHPROXY_SHUTDOWN_SECONDS"])
    assert int(stop) >= shutdown + 5
    # And the unit lets a monitor hold its sessions: one open file each.
    [nofile] = re.findall(r"^LimitNOFILE=(\d+)$", text, re.MULTILINE)
    assert int(nofile) > int(example_environment()["PUSHPROXY_MAX_SESSIONS"]) + 1000


def test_the_celery_units_serve_every_queue_tasks_are_routed_to() -> None:
    served = set()
    for unit in SERVICES:
        argv = exec_start(unit)
        if Path(argv[0]).name != "celery":
            continue
        assert argv[1:3] == ["-A", "portal"]
        if "worker" in argv:
            served.add(argv[argv.index("-Q") + 1])
    routed = {route["queue"] for route in django_settings.CELERY_TASK_ROUTES.values()}

    # "celery" is Celery's default queue: every task without a route (account, sheet,
    # reconcile jobs, everything beat sends). The monitors' idle.<id> queues are their own.
    assert served == routed | {"celery"}


def test_the_web_unit_starts_a_gunicorn_whose_configuration_loads(tmp_path: Path) -> None:
    argv = exec_start(UNITS / "mailportal-web.service")
    assert Path(argv[0]).name == "gunicorn"
    assert "portal.redact.GunicornLogger" in argv  # the access log masks tokens
    assert argv[argv.index("--timeout") + 1] == "30"  # docs/operations.md relies on it

    result = run_with(example_environment(), "-m", "gunicorn", "--check-config", *argv[1:])

    assert result.returncode == 0, result.stdout + result.stderr


def test_the_beat_unit_keeps_its_schedule_in_the_writable_folder() -> None:
    argv = exec_start(UNITS / "mailportal-beat.service")

    assert argv[argv.index("--schedule") + 1].startswith("/srv/mailportal/var/")


# ----- the TLS proxy example -------------------------------------------------------------------


def test_the_nginx_example_replaces_forwarded_for_and_limits_the_admin() -> None:
    proxy = (NGINX / "mailportal-proxy.conf").read_text()
    site = (NGINX / "mailportal.conf").read_text()

    assert "proxy_set_header X-Forwarded-For $remote_addr;" in proxy
    assert "$proxy_add_x_forwarded_for" not in proxy + site  # it would keep the client's
    assert "proxy_set_header X-Forwarded-Proto $scheme;" in proxy
    admin = site.split("location /admin/ {")[1].split("}")[0]
    assert "deny all;" in admin and "allow " in admin
    assert re.search(r"access_log \S+ portal;", site)  # the token-masking log format
    assert "[redacted]" in site
