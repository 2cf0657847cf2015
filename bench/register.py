"""Registration benchmark (issue 3): POST /api/v1/register on gunicorn, next to the bare hash.

Run as `.venv/bin/python bench/register.py [--registrations 400] [--concurrency 4]`.

mailportal runs with the production environment of bench/autoconfig.py (PostgreSQL and Redis
when they answer on 127.0.0.1, else SQLite and no Redis) and the demo provider of
deploy/demo-providers.json. Each request registers a new account (unique id, username and
password), one TCP connection per request, a fixed number in flight, loopback only.
The registration rate limit (REGISTRATION_RATE, a setting only, 10/h per client address) would
refuse all but ten, so gunicorn runs with a settings module written to var/bench/ that imports
portal.settings and raises that one limit; nothing else differs from production.

The bare hash is accounts.passwords.hash_password timed in this process: the floor under any
registration's CPU cost. Overhead = server CPU per registration - bare hash CPU. Afterwards the
database must hold exactly as many accounts as registrations answered 201. Exit code 0 with
figures, 2 when the benchmark could not run (or the account count is wrong).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass

from _common import (
    LoadResult,
    Server,
    exclusive_run,
    fetch,
    format_table,
    free_port,
    gunicorn_command,
    http_request,
    machine_busy_s,
    machine_description,
    run_load,
    stop_on_sigterm,
)
from autoconfig import (
    DOMAIN,
    ROOT,
    VAR,
    VENV_BIN,
    BenchError,
    Measurement,
    portal_environment,
    prepare_portal,
)

SETTINGS_MODULE = "bench_register_settings"
BENCH_RATE = "1000000/h"
SETTINGS_OVERRIDE = f'''"""Written by bench/register.py: a higher registration rate."""

from portal.settings import *  # noqa: F403

REGISTRATION_RATE = "{BENCH_RATE}"
'''
HEADERS = {
    "Content-Type": "application/json",
    "X-Forwarded-For": "192.0.2.10",
    "X-Forwarded-Proto": "https",
}
COUNT_ACCOUNTS = "from accounts.models import MailAccount; print(MailAccount.objects.count())"


@dataclass(frozen=True)
class HashTiming:
    count: int
    wall_s: float
    cpu_s: float
    parameters: str

    @property
    def ms_per_hash(self) -> float:
        return 1000 * self.cpu_s / self.count

    @property
    def hashes_per_core_s(self) -> float:
        return self.count / self.cpu_s


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--registrations", type=int, default=400, help="measured registrations")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn sync workers")
    parser.add_argument("--warmup", type=int, default=20, help="registrations before measuring")
    parser.add_argument("--hashes", type=int, default=100, help="bare hashes timed in-process")
    parser.add_argument("--sqlite", action="store_true", help="SQLite even if PostgreSQL answers")
    parser.add_argument("--no-redis", action="store_true", help="no Redis even if it answers")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    VAR.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine_description()}")
    try:
        with ExitStack() as stack:
            stack.enter_context(exclusive_run(VAR / "bench.lock"))
            hashing = time_bare_hash(args.hashes)
            print(
                f"bare hash ({hashing.parameters}): {hashing.ms_per_hash:.1f} ms CPU per hash "
                f"({1000 * hashing.wall_s / hashing.count:.1f} ms wall), "
                f"{hashing.hashes_per_core_s:.1f} hashes/s per core, {hashing.count} hashes"
            )
            measurement, accounts = run(args, stack)
    except (BenchError, RuntimeError, OSError, ValueError) as exc:
        print(f"\nbenchmark could not run: {exc}", file=sys.stderr)
        return 2
    print()
    report(measurement, hashing, args)
    expected = measurement.load.ok + args.warmup
    print(f"\naccounts in the database: {accounts} (expected {expected}: warm-up + measured 201s)")
    if accounts != expected:
        print("account count MISMATCH", file=sys.stderr)
        return 2
    return 0


def time_bare_hash(count: int) -> HashTiming:
    """hash_password `count` times here, after one untimed call (imports, first allocation)."""
    sys.path.insert(0, str(ROOT))
    from accounts.passwords import MailboxPasswordHasher, hash_password

    hasher = MailboxPasswordHasher
    parameters = f"argon2id m={hasher.memory_cost} KiB t={hasher.time_cost} p={hasher.parallelism}"
    hash_password("warm-up passphrase 0")
    passwords = [f"a-long-unique-passphrase-{index}" for index in range(count)]
    cpu_before, wall_before = time.process_time(), time.perf_counter()
    for password in passwords:
        hash_password(password)
    cpu_s, wall_s = time.process_time() - cpu_before, time.perf_counter() - wall_before
    return HashTiming(count, wall_s, cpu_s, parameters)


def registration(run_id: str, index: int) -> bytes:
    """One registration request for a new account; username and password unique per run."""
    username = f"b{run_id}n{index}"
    body = {
        "id": f"bench-{run_id}-{index}",
        "type": "urn:cadmium:profile:register",
        "to": [DOMAIN],
        "payload": {
            "username": username,
            "thirdPIDs": [],
            "password": f"a-long-unique-passphrase-{run_id}-{index}",
            "loginOnSuccess": False,
        },
    }
    return http_request(
        "POST",
        "/api/v1/register",
        host="127.0.0.1",
        headers=HEADERS,
        body=json.dumps(body).encode(),
    )


def run(args: argparse.Namespace, stack: ExitStack) -> tuple[Measurement, int]:
    env, backends = stack.enter_context(
        portal_environment(use_postgres=not args.sqlite, use_redis=not args.no_redis)
    )
    (VAR / f"{SETTINGS_MODULE}.py").write_text(SETTINGS_OVERRIDE)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(VAR), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    env["DJANGO_SETTINGS_MODULE"] = SETTINGS_MODULE
    print(f"mailportal: {backends}")
    print(
        f"mailportal: settings var/bench/{SETTINGS_MODULE}.py = portal.settings with "
        f'REGISTRATION_RATE = "{BENCH_RATE}" (production: 10/h per client address)'
    )
    prepare_portal(env)
    port = free_port()
    server = stack.enter_context(
        Server(
            "mailportal",
            gunicorn_command(VENV_BIN / "gunicorn", "portal.wsgi", port=port, workers=args.workers),
            port=port,
            env=env,
            cwd=ROOT,
            log_path=VAR / "register-gunicorn.log",
        )
    )
    run_id = uuid.uuid4().hex[:8]
    total = args.warmup + args.registrations
    requests = [registration(run_id, index) for index in range(total)]

    first = fetch(server.port, requests[0], timeout_s=30)
    if first.status != 201 or b'"ok": true' not in first.body.replace(b'":true', b'": true'):
        raise BenchError(f"first registration answered {first.status}: {first.body[:300]!r}")
    if args.warmup > 1:
        warm = run_load(
            port=server.port,
            request=requests[1 : args.warmup],
            total=args.warmup - 1,
            concurrency=args.concurrency,
            expect_status=201,
            timeout_s=30,
        )
        if warm.error_count:
            raise BenchError(f"warm-up errors: {dict(warm.errors)}")
    time.sleep(0.5)
    print(
        f"load: {args.registrations} registrations after {args.warmup} warm-up, "
        f"{args.concurrency} in flight, {args.workers} gunicorn sync workers, "
        "one TCP connection per request\n"
    )
    server_before, machine_before = server.cpu_s(), machine_busy_s()
    result: LoadResult = run_load(
        port=server.port,
        request=requests[args.warmup :],
        total=args.registrations,
        concurrency=args.concurrency,
        expect_status=201,
        timeout_s=30,
        time_limit_s=600,
    )
    measurement = Measurement(
        result, server.cpu_s() - server_before, machine_busy_s() - machine_before
    )
    server.stop()
    return measurement, count_accounts(env)


def count_accounts(env: Mapping[str, str]) -> int:
    done = subprocess.run(
        [str(VENV_BIN / "python"), "manage.py", "shell", "-c", COUNT_ACCOUNTS],
        cwd=ROOT,
        env=dict(env),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"counting accounts failed: {done.stderr.strip()[-500:]}")
    return int(done.stdout.strip().splitlines()[-1])


def report(m: Measurement, hashing: HashTiming, args: argparse.Namespace) -> None:
    errors = ", ".join(f"{reason}: {n}" for reason, n in m.load.errors.items()) or "0"
    cpu_ms = m.server_cpu_ms_per_request
    header = [
        "registrations/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "server CPU ms/reg",
        "bare hash ms",
        "overhead ms/reg",
        "client cores",
        "rest cores",
    ]
    row = [
        f"{m.load.requests_per_s:.1f}",
        f"{m.load.percentile_ms(0.50):.1f}",
        f"{m.load.percentile_ms(0.99):.1f}",
        errors,
        f"{cpu_ms:.1f}",
        f"{hashing.ms_per_hash:.1f}",
        f"{cpu_ms - hashing.ms_per_hash:.1f}",
        f"{m.client_cores:.2f}",
        f"{m.other_cores:.2f}",
    ]
    print(format_table(header, [row]))
    print(
        f"\n{m.load.ok} of {args.registrations} registrations answered 201 in "
        f"{m.load.wall_s:.1f} s; bare hash {hashing.parameters}: {hashing.hashes_per_core_s:.1f} "
        f"hashes/s per core, so {args.workers} workers could at best reach "
        f"{args.workers * hashing.hashes_per_core_s:.1f} registrations/s on hashing alone. "
        "Rest cores: PostgreSQL, Redis, the kernel and any other work."
    )


if __name__ == "__main__":
    sys.exit(main())
