"""Load with the plan's mix (RELIABILITY.md check 26): 70% suggestions, 20% registrations,
10% autoconfig, against gunicorn + a Celery worker + PostgreSQL + Redis on this machine,
then the invariants: no duplicate, no orphan, no lost acknowledgement.

Run as `.venv/bin/python bench/load.py [--requests 1500] [--users 16] [--time-limit 240]`.

It starts everything itself, on free loopback ports: its own database on the local
PostgreSQL (mailportal_load, dropped afterwards), a private redis-server (not the shared one),
a private Dovecot reading that database (`manage.py run_dovecot`, when Dovecot is installed),
a stub remote provider (this process, a thread: answers after 20 ms), gunicorn with the
production settings (argon2id at production parameters, rate limits on) and one Celery
worker for the default and the suggestion queues. The load client is plain asyncio: `--users`
virtual users, each sending one request at a time on a new connection, kinds drawn with the
mix's weights from a seeded generator; each request comes through the trusted proxy
(X-Forwarded-For) from a client address of its own, as many people behind one portal do,
so the per-address rate limits (which a single address would hit within seconds) stay out
of the way without changing a setting.

Afterwards: (1) no duplicate: no two accounts share a lower-cased address; (2) no orphan:
no account is left "creating"/"deleting", and the reconciler reports nothing between the
accounts and the mail server's view; (3) no lost acknowledgement: every 201 is a committed,
active account, and Dovecot accepts each acknowledged password over IMAP (all of them, up
to --imap-checks). Exit 0 when the invariants hold (figures are a report, not a verdict),
1 when one does not, 2 when the benchmark could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import imaplib
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from _common import (
    LOOPBACK,
    Server,
    fetch,
    format_table,
    free_port,
    guarded_main,
    gunicorn_command,
    postgres_answers,
    postgres_database,
)
from autoconfig import (
    POSTGRES_ADMIN_DSN,
    ROOT,
    VAR,
    VENV_BIN,
    BenchError,
    manage,
)

DATABASE = "mailportal_load"
DOMAIN = "example.org"
MIX = {"suggestions": 70, "register": 20, "autoconfig": 10}
EXPECTED = {"suggestions": 200, "register": 201, "autoconfig": 200}
FIRST_NAMES = ["Anna", "Ben", "Chloé", "Dmitri", "Emre", "Fatima", "Gregor", "Hana", "Ivo"]
LAST_NAMES = ["Meyer", "Nguyen", "Okafor", "Petrov", "Quist", "Rossi", "Schmidt", "Tanaka"]
SEED_REMOTE = """
from providers.models import Provider, ProviderDomain
p = Provider(slug="remote", name="Remote Mail", short_name="Remote", hosted=False,
    registration_url="https://remote.example/signup?email={{email}}",
    suggestion_url={url!r}, tos_url="https://remote.example/tos",
    privacy_url="https://remote.example/privacy", suggestion_timeout=1.0)
p.full_clean(); p.save()
ProviderDomain.objects.create(provider=p, name="remote.example", position=0)
"""
INVARIANTS = """
import json
from django.db import connection
from accounts.models import MailAccount
from accounts.services.reconcile import reconcile_mailboxes
with connection.cursor() as cursor:
    cursor.execute(
        "SELECT count(*) FROM (SELECT 1 FROM accounts_mailaccount "
        "GROUP BY domain_id, lower(local_part) HAVING count(*) > 1) AS d")
    duplicates = cursor.fetchone()[0]
report = reconcile_mailboxes(fix_drift=False)
accounts = {a.address: [a.status, a.mailbox_state] for a in
            MailAccount.objects.select_related("domain")}
print(json.dumps({
    "duplicates": duplicates,
    "orphan_mailboxes": len(report.orphan_mailboxes),
    "missing_mailboxes": len(report.missing_mailboxes),
    "status_drift": len(report.status_drift),
    "unsettled": sum(1 for s, m in accounts.values() if m != "ready"),
    "accounts": accounts,
}))
"""


@dataclass
class KindStats:
    sent: int = 0
    ok: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)

    def percentile(self, fraction: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[max(0, min(len(ordered) - 1, round(fraction * len(ordered)) - 1))]


@dataclass
class Run:
    kinds: dict[str, KindStats] = field(default_factory=lambda: defaultdict(KindStats))
    acknowledged: list[tuple[str, str]] = field(default_factory=list)  # (address, password)
    wall_s: float = 0.0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=1500, help="requests in all")
    parser.add_argument("--users", type=int, default=16, help="virtual users (in flight)")
    parser.add_argument("--time-limit", type=float, default=240, help="seconds, then stop")
    parser.add_argument("--workers", type=int, default=3, help="gunicorn sync workers")
    parser.add_argument("--seed", type=int, default=26, help="the mix's random generator")
    parser.add_argument("--imap-checks", type=int, default=400, help="IMAP logins afterwards")
    parser.add_argument("--rss-ceiling-mb", type=int, default=400, help="per process")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    return guarded_main(VAR, lambda stack: run(args, stack))


def run(args: argparse.Namespace, stack: ExitStack) -> int:
    version = postgres_answers(POSTGRES_ADMIN_DSN)
    if version is None:
        raise BenchError("PostgreSQL does not answer on 127.0.0.1:5432 (user postgres)")
    stack.enter_context(postgres_database(DATABASE, admin_dsn=POSTGRES_ADMIN_DSN))
    redis_url = stack.enter_context(private_redis())
    stub_url = stack.enter_context(stub_provider())
    env = portal_env(redis_url)
    manage(env, "migrate", "--noinput")
    manage(env, "import_providers", str(ROOT / "deploy" / "demo-providers.json"))
    manage(env, "shell", "-c", SEED_REMOTE.format(url=stub_url))
    imap_port = stack.enter_context(private_dovecot(env))
    print(f"mailportal: PostgreSQL {version} (database {DATABASE}), private Redis, "
          f"Dovecot {'on ' + str(imap_port) if imap_port else 'not installed'}")  # fmt: skip
    port = free_port()
    web = stack.enter_context(
        Server(
            "gunicorn",
            gunicorn_command(VENV_BIN / "gunicorn", "portal.wsgi", port=port, workers=args.workers),
            port=port,
            env=env,
            cwd=ROOT,
            log_path=VAR / "load-gunicorn.log",
        )
    )
    worker = stack.enter_context(celery_worker(env))
    check_fanout(port)
    print(
        f"load: {args.requests} requests, mix {MIX}, {args.users} users, "
        f"{args.workers} gunicorn sync workers, 1 Celery worker (threads, 16)\n"
    )
    result = asyncio.run(load(port, args))
    rss = {"gunicorn": peak_rss_mb(web.pid), "celery": peak_rss_mb(worker.pid)}
    web.stop()
    report(result, rss, args)
    return check_invariants(env, result, imap_port, args)


def check_fanout(port: int) -> None:
    """One suggestion query before the load: the remote provider must answer through the
    Celery worker (else the load would measure timeouts), the hosted one in-process."""
    raw, _, _ = request_for("suggestions", 0, random.Random(0))
    for _ in range(20):
        answer = fetch(port, raw, timeout_s=30)
        entries = json.loads(answer.body) if answer.status == 200 else []
        statuses = {e.get("provider"): e.get("succeeded") for e in entries}
        if statuses.get("remote.example") and statuses.get(DOMAIN):
            return
        time.sleep(0.5)  # the worker may still be connecting
    raise BenchError(f"the fan-out does not work: {answer.status} {answer.body[:300]!r}")


def portal_env(redis_url: str) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("PORTAL_", "DJANGO_", "MAILBOX_", "PUSHPROXY_"))
        and name not in {"DATABASE_URL", "REDIS_URL", "SECRET_KEY", "SECRET_KEY_FILE"}
    }
    env.update(
        {
            "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{DATABASE}",
            "REDIS_URL": redis_url,
            "PORTAL_BASE_URL": "https://portal.example.test",
            "PORTAL_ALLOWED_HOSTS": "127.0.0.1,localhost",
            # The load client plays the TLS proxy: its X-Forwarded-* are believed.
            "PORTAL_TRUSTED_PROXIES": "127.0.0.1/32",
            "PORTAL_EGRESS_ALLOW": "127.0.0.0/8",
            "SECRET_KEY": secrets.token_hex(32),
        }
    )
    return env


@contextmanager
def private_redis() -> Iterator[str]:
    directory = VAR / "load-redis"
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    command = ["redis-server", "--port", str(port), "--bind", LOOPBACK, "--dir", str(directory),
               "--save", "", "--appendonly", "no"]  # fmt: skip
    with Server("redis", command, port=port, env=dict(os.environ), cwd=directory,
                log_path=VAR / "load-redis.log"):  # fmt: skip
        yield f"redis://{LOOPBACK}:{port}/0"


@contextmanager
def private_dovecot(env: Mapping[str, str]) -> Iterator[int | None]:
    """Dovecot reading the load database, or None where it is not installed."""
    state = VAR / "load-dovecot"
    port = free_port()
    started = subprocess.run(
        [str(VENV_BIN / "python"), "manage.py", "run_dovecot", "start", "--port", str(port),
         "--state-dir", str(state)],
        cwd=ROOT, env=dict(env), capture_output=True, text=True, check=False,
    )  # fmt: skip
    if started.returncode != 0:
        print(f"Dovecot: not started ({started.stderr.strip()[-200:]})")
        yield None
        return
    try:
        yield port
    finally:
        manage(env, "run_dovecot", "stop", "--state-dir", str(state))


@contextmanager
def celery_worker(env: Mapping[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    log = (VAR / "load-celery.log").open("wb")
    process = subprocess.Popen(
        [str(VENV_BIN / "celery"), "-A", "portal", "worker", "-Q", "celery,suggest", "-P",
         "threads", "--concurrency", "16", "-n", f"load-{os.getpid()}@%h", "--without-mingle",
         "--without-gossip", "-l", "WARNING"],
        cwd=ROOT, env=dict(env), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    time.sleep(3)  # connected to the broker by then; a late start only costs suggestions
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@contextmanager
def stub_provider() -> Iterator[str]:
    """A remote provider's suggestion API: 20 ms, then one address per query."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            time.sleep(0.02)
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
            first = query.get("first_name", ["x"])[0].lower()
            body = json.dumps(
                {"succeeded": True, "addresses": [f"{first}@remote.example"], "price": 0}
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://{LOOPBACK}:{server.server_address[1]}/suggest"
    finally:
        server.shutdown()
        server.server_close()


# ----- the load ------------------------------------------------------------------------------


def request_for(kind: str, number: int, rng: random.Random) -> tuple[bytes, str, str]:
    """The raw request, and for a registration the address and password it asks for."""
    client = f"198.{18 + number // 65536 % 2}.{number // 256 % 256}.{number % 256}"
    headers = {"X-Forwarded-For": client, "X-Forwarded-Proto": "https"}
    address = password = ""
    if kind == "suggestions":
        query = urllib.parse.urlencode(
            {
                "first_name": rng.choice(FIRST_NAMES),
                "last_name": f"{rng.choice(LAST_NAMES)}{number}",
            }
        )
        method, path, body = "GET", f"/api/v1/suggestions?{query}", b""
    elif kind == "register":
        local = f"load{number}x{secrets.token_hex(3)}"
        address, password = f"{local}@{DOMAIN}", f"Load-{secrets.token_urlsafe(12)}"
        payload = {"username": local, "password": password}
        message = {"id": secrets.token_hex(8), "type": "urn:cadmium:profile:register",
                   "to": [DOMAIN], "payload": payload}  # fmt: skip
        method, path, body = "POST", "/api/v1/register", json.dumps(message).encode()
        headers["Content-Type"] = "application/json"
    else:
        method, path, body = "GET", f"/mail/config-v1.1.xml?emailaddress=a%40{DOMAIN}", b""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {LOOPBACK}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body, address, password


async def load(port: int, args: argparse.Namespace) -> Run:
    rng = random.Random(args.seed)
    kinds = rng.choices(list(MIX), weights=list(MIX.values()), k=args.requests)
    result = Run()
    numbers = iter(range(args.requests))
    deadline = time.monotonic() + args.time_limit

    async def user() -> None:
        for number in numbers:
            if time.monotonic() > deadline:
                result.kinds[kinds[number]].statuses["not sent (time limit)"] += 1
                continue
            kind = kinds[number]
            raw, address, password = request_for(kind, number, rng)
            stats = result.kinds[kind]
            stats.sent += 1
            started = time.perf_counter()
            try:
                reader, writer = await asyncio.open_connection(LOOPBACK, port)
                writer.write(raw)
                answer = await asyncio.wait_for(reader.read(), timeout=60)
                writer.close()
                status = answer[9:12].decode("latin-1") or "none"
            except (OSError, TimeoutError) as exc:
                status = type(exc).__name__
            elapsed_ms = 1000 * (time.perf_counter() - started)
            stats.statuses[status] += 1
            if status == str(EXPECTED[kind]):
                stats.ok += 1
                stats.latencies_ms.append(elapsed_ms)
                if kind == "register":
                    result.acknowledged.append((address, password))

    started = time.perf_counter()
    await asyncio.gather(*(user() for _ in range(args.users)))
    result.wall_s = time.perf_counter() - started
    return result


def peak_rss_mb(pid: int) -> float:
    """The highest peak resident set (VmHWM) of `pid` and its children, in MB."""
    peaks = []
    for each in [pid, *children(pid)]:
        try:
            for line in Path(f"/proc/{each}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peaks.append(int(line.split()[1]) / 1024)
        except OSError:
            continue
    return max(peaks, default=0.0)


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


# ----- report and invariants -------------------------------------------------------------


def report(result: Run, rss: dict[str, float], args: argparse.Namespace) -> None:
    rows = []
    all_latencies: list[float] = []
    for kind in MIX:
        stats = result.kinds[kind]
        all_latencies += stats.latencies_ms
        others = {s: n for s, n in stats.statuses.items() if s != str(EXPECTED[kind])}
        rows.append([
            kind, str(stats.sent), str(stats.ok), f"{stats.ok / result.wall_s:.1f}",
            f"{stats.percentile(0.50):.0f}", f"{stats.percentile(0.95):.0f}",
            f"{stats.percentile(0.99):.0f}",
            ", ".join(f"{s}: {n}" for s, n in sorted(others.items())) or "0",
        ])  # fmt: skip
    total = KindStats(latencies_ms=all_latencies)
    ok = sum(result.kinds[k].ok for k in MIX)
    sent = sum(result.kinds[k].sent for k in MIX)
    rows.append([
        "all", str(sent), str(ok), f"{ok / result.wall_s:.1f}", f"{total.percentile(0.50):.0f}",
        f"{total.percentile(0.95):.0f}", f"{total.percentile(0.99):.0f}",
        str(sent - ok),
    ])  # fmt: skip
    header = ["kind", "sent", "ok", "ok/s", "p50 ms", "p95 ms", "p99 ms", "other answers"]
    print(format_table(header, rows))
    server_errors = sum(
        n for k in MIX for s, n in result.kinds[k].statuses.items() if s.startswith("5")
    )
    print(f"\n{result.wall_s:.1f} s; 5xx answers: {server_errors}; peak RSS per process: "
          + ", ".join(f"{name} {mb:.0f} MB" for name, mb in rss.items())
          + f" (ceiling {args.rss_ceiling_mb} MB:"
          + (" kept)" if max(rss.values()) <= args.rss_ceiling_mb else " EXCEEDED)"))  # fmt: skip


def check_invariants(
    env: Mapping[str, str], result: Run, imap_port: int | None, args: argparse.Namespace
) -> int:
    done = subprocess.run(
        [str(VENV_BIN / "python"), "manage.py", "shell", "-c", INVARIANTS],
        cwd=ROOT, env=dict(env), capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise BenchError(f"invariant query failed: {done.stderr.strip()[-500:]}")
    facts = json.loads(done.stdout.strip().splitlines()[-1])
    accounts: dict[str, list[str]] = facts["accounts"]
    lost = [a for a, _ in result.acknowledged if accounts.get(a) != ["active", "ready"]]
    unacknowledged = len(accounts) - len(result.acknowledged)
    failed_logins, checked = imap_logins(result.acknowledged[: args.imap_checks], imap_port)
    checks = [
        ("no duplicate address", facts["duplicates"] == 0, f"{facts['duplicates']} duplicates"),
        (
            "no orphan (reconciler: accounts vs the mail server's view)",
            facts["orphan_mailboxes"] == facts["missing_mailboxes"] == 0
            and facts["unsettled"] == 0,
            f"{facts['orphan_mailboxes']} orphan mailboxes, {facts['missing_mailboxes']} "
            f"missing, {facts['unsettled']} not ready",
        ),
        (
            "no lost acknowledgement (every 201 is an active account)",
            not lost,
            f"{len(result.acknowledged)} acknowledged, {len(lost)} without an account",
        ),
        (
            "acknowledged passwords log in over IMAP (Dovecot)",
            not failed_logins,
            f"{checked} checked, {len(failed_logins)} refused"
            if imap_port
            else "not checked: Dovecot is not installed",
        ),
    ]
    print(f"\naccounts in the database: {len(accounts)}; answered 201: "
          f"{len(result.acknowledged)}; accounts without a 201 (e.g. the client gave up "
          f"before the answer): {unacknowledged}")  # fmt: skip
    for name, held, detail in checks:
        print(f"invariant {'holds' if held else 'BROKEN'}: {name}: {detail}")
    return 0 if all(held for _, held, _ in checks) else 1


def imap_logins(credentials: list[tuple[str, str]], port: int | None) -> tuple[list[str], int]:
    """IMAP LOGIN (plain, loopback) with each (address, password); the refused addresses."""
    if port is None:
        return [], 0
    refused = []
    for address, password in credentials:
        try:
            with imaplib.IMAP4(LOOPBACK, port, timeout=10) as imap:
                imap.login(address, password)
                imap.logout()
        except (imaplib.IMAP4.error, OSError):
            refused.append(address)
    return refused, len(credentials)


if __name__ == "__main__":
    sys.exit(main())
