"""Suggestion fan-out benchmark (issue 4): latency over the slowest provider; hosted engine rate.

Run as `.venv/bin/python bench/fanout.py [--queries 100] [--providers 1,5,10,20]`.

Remote providers are played by local HTTP servers (asyncio, HTTP/1.1 keep-alive, in a process
of their own so that they do not share our interpreter), each answering one suggestion entry
after 100 ms. For each number of providers, `providers.services.fanout.collect_suggestions`
is timed end to end (provider selection, dispatch, waiting, collation, the hourly counters),
one query after another with distinct names and the suggestion cache off, in two modes:

- threads: no Redis; remote providers asked from this process's thread pool (`make run`);
- celery: Redis database 14 as broker and result backend, one worker process
  (`celery -A portal worker -Q suggest -P threads -c 32`), the production shape. Skipped
  when Redis does not answer on 127.0.0.1:6379.

Overhead = fan-out latency - 100 ms (the slowest provider's own delay). Then the hosted
engine: `providers.services.suggest.suggest_addresses` for distinct names against a domain
holding 2,000 accounts, many of them on the names asked (so numbered candidates are needed).
PostgreSQL (a throw-away database) when it answers, else SQLite under var/bench/.
Exit code 0 with figures, 2 when the benchmark could not run or a provider failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from multiprocessing.connection import Connection

from _common import (
    exclusive_run,
    format_table,
    machine_busy_s,
    machine_description,
    postgres_answers,
    postgres_database,
    redis_answers,
)
from autoconfig import POSTGRES_ADMIN_DSN, ROOT, VAR

DATABASE = "mailportal_bench_fanout"
REDIS_URL = "redis://127.0.0.1:6379/14"
PROVIDER_DELAY_S = 0.1
FIRST_NAMES = ["Juliet", "Romeo", "Mercutio", "Tybalt", "Benvolio", "Rosaline", "Paris", "Nurse"]
LAST_NAMES = ["Capulet", "Montague", "Escalus", "Laurence", "Balthasar", "Abram", "Gregory"]


class BenchError(Exception):
    pass


# ----- the fake providers (a process of their own) ---------------------------------------------


def _serve_providers(count: int, delay: float, pipe: Connection) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        port = writer.get_extra_info("sockname")[1]
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                target = head.split(b" ", 2)[1].decode("latin-1")
                first = target.partition("first_name=")[2].partition("&")[0].lower() or "x"
                await asyncio.sleep(delay)
                body = json.dumps(
                    {"succeeded": True, "addresses": [f"{first}@p{port}.example"], "price": 0}
                ).encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main() -> None:
        servers = [await asyncio.start_server(handle, "127.0.0.1", 0) for _ in range(count)]
        pipe.send([server.sockets[0].getsockname()[1] for server in servers])
        await asyncio.Event().wait()  # until terminated

    asyncio.run(main())


@contextlib.contextmanager
def fake_providers(count: int) -> Iterator[list[int]]:
    parent, child = multiprocessing.Pipe()
    process = multiprocessing.Process(
        target=_serve_providers, args=(count, PROVIDER_DELAY_S, child), daemon=True
    )
    process.start()
    try:
        if not parent.poll(10):
            raise BenchError("the fake providers did not start")
        ports: list[int] = parent.recv()
        yield ports
    finally:
        process.terminate()
        process.join(5)


# ----- Django, the worker -----------------------------------------------------------------------


@contextlib.contextmanager
def database() -> Iterator[str]:
    version = postgres_answers(POSTGRES_ADMIN_DSN)
    if version:
        with postgres_database(DATABASE, admin_dsn=POSTGRES_ADMIN_DSN):
            yield f"postgres://postgres@127.0.0.1:5432/{DATABASE}"
        return
    VAR.mkdir(parents=True, exist_ok=True)
    path = VAR / "fanout.sqlite3"
    for leftover in VAR.glob("fanout.sqlite3*"):
        leftover.unlink()
    yield f"sqlite:///{path}"


@contextlib.contextmanager
def celery_worker(env: dict[str, str]) -> Iterator[None]:
    log = VAR / "fanout-worker.log"
    command = [
        sys.executable, "-m", "celery", "-A", "portal", "worker", "-Q", "suggest",
        "-P", "threads", "-c", "32", "-n", f"bench-fanout-{os.getpid()}@%h",
        "--without-mingle", "--without-gossip", "--without-heartbeat", "-l", "WARNING",
    ]  # fmt: skip
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT
        )
    try:
        yield
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()


def wait_for_worker() -> None:
    from providers import tasks

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        result = tasks.query_provider.apply_async(
            ({"provider": "probe", "url": "http://127.0.0.1:9/", "params": {}, "timeout": 1},)
        )
        try:
            result.get(timeout=3)
            result.forget()
            return
        except Exception:
            result.forget()
    raise BenchError("the Celery worker did not answer within 60 s (var/bench/fanout-worker.log)")


# ----- measurements -----------------------------------------------------------------------------


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[index]


def names(count: int, salt: str) -> list[tuple[str, str]]:
    return [
        (f"{FIRST_NAMES[n % len(FIRST_NAMES)]}{salt}{n}", LAST_NAMES[n % len(LAST_NAMES)])
        for n in range(count)
    ]


def measure_fanout(ports: Sequence[int], queries: int, mode: str) -> list[str]:
    from django.conf import settings

    from providers.models import Provider, ProviderDomain
    from providers.services import fanout
    from providers.services.suggest import NameQuery

    Provider.objects.all().delete()
    for port in ports:
        provider = Provider.objects.create(
            slug=f"p{port}",
            name=f"Remote {port}",
            short_name=f"R{port}",
            hosted=False,
            registration_url=f"http://127.0.0.1:{port}/signup?email={{email}}",
            suggestion_url=f"http://127.0.0.1:{port}/suggest",
            tos_url="https://example.org/tos",
            privacy_url="https://example.org/privacy",
            suggestion_timeout=3.0,
        )
        ProviderDomain.objects.create(provider=provider, name=f"p{port}.example")
    settings.CELERY_TASK_ALWAYS_EAGER = mode == "threads"
    warmup = 5
    latencies: list[float] = []
    for index, (first, last) in enumerate(names(queries + warmup, f"{mode}{len(ports)}x")):
        started = time.perf_counter()
        result = fanout.collect_suggestions(query=NameQuery(first, last))
        elapsed = time.perf_counter() - started
        failed = [a for a in result.answers if not a.succeeded]
        if failed:
            raise BenchError(f"{mode}, {len(ports)} providers: {failed[0].provider} {failed[0]}")
        if index >= warmup:
            latencies.append(elapsed * 1000)
    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    floor = PROVIDER_DELAY_S * 1000
    return [
        mode,
        str(len(ports)),
        str(queries),
        f"{p50:.1f}",
        f"{p99:.1f}",
        f"{p50 - floor:.1f}",
        f"{p99 - floor:.1f}",
        f"{statistics.mean(latencies):.1f}",
    ]


def measure_hosted(queries: int) -> list[str]:
    from accounts import passwords
    from accounts.models import MailAccount
    from providers.models import Provider, ProviderDomain
    from providers.services.suggest import NameQuery, suggest_addresses

    Provider.objects.all().delete()
    provider = Provider.objects.create(slug="hosted", name="Hosted", short_name="H")
    domain = ProviderDomain.objects.create(provider=provider, name="hosted.example")
    hashed = passwords.hash_password("bench-password-1")  # one hash for every row
    taken = []
    for first in FIRST_NAMES:
        for last in LAST_NAMES:
            base = f"{first}.{last}".lower()
            taken += [base, base.replace(".", ""), f"{base}1", f"{base}2"]
    taken += [f"user{n}" for n in range(2000 - len(taken))]
    MailAccount.objects.bulk_create(
        MailAccount(domain=domain, local_part=name, password=hashed, created_via="admin")
        for name in taken
    )
    pairs = [(FIRST_NAMES[n % 8], LAST_NAMES[n % 7]) for n in range(queries)]
    addresses = 0
    cpu_before = time.process_time()
    started = time.perf_counter()
    for first, last in pairs:
        addresses += len(suggest_addresses(provider=provider, query=NameQuery(first, last)))
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_before
    return [
        str(queries),
        f"{queries / elapsed:.0f}",
        f"{addresses / elapsed:.0f}",
        f"{elapsed / queries * 1000:.2f}",
        f"{cpu / queries * 1000:.2f}",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queries", type=int, default=100, help="per provider count and mode")
    parser.add_argument("--providers", default="1,5,10,20", help="provider counts to measure")
    parser.add_argument("--hosted-queries", type=int, default=500)
    parser.add_argument("--no-redis", action="store_true", help="threads mode only")
    args = parser.parse_args()
    counts = [int(n) for n in args.providers.split(",")]
    use_redis = not args.no_redis and redis_answers()
    with exclusive_run(VAR / "bench.lock"), database() as database_url:
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "PORTAL_BASE_URL": "https://portal.example.test",
            "DJANGO_SETTINGS_MODULE": "portal.settings",
        }
        env.pop("REDIS_URL", None)
        if use_redis:
            env["REDIS_URL"] = REDIS_URL
        os.environ.clear()
        os.environ.update(env)
        sys.path.insert(0, str(ROOT))
        import django

        django.setup()
        from django.conf import settings
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        settings.SUGGESTION_CACHE_SECONDS = 0
        import logging

        logging.disable(logging.INFO)  # one line per fan-out would be the benchmark's cost
        modes = ["threads", "celery"] if use_redis else ["threads"]
        print(f"machine: {machine_description()}")
        print(f"database: {database_url.split('@')[-1]}; redis: {REDIS_URL if use_redis else 'no'}")
        rows = []
        busy_before, wall_before = machine_busy_s(), time.monotonic()
        with contextlib.ExitStack() as stack:
            if use_redis:
                stack.enter_context(celery_worker(env))
                wait_for_worker()
            for count in counts:
                with fake_providers(count) as ports:
                    for mode in modes:
                        rows.append(measure_fanout(ports, args.queries, mode))
                        print(f"  measured {mode} x{count}", flush=True)
        busy = (machine_busy_s() - busy_before) / (time.monotonic() - wall_before)
        print()
        print(f"Fan-out, each provider answering in {PROVIDER_DELAY_S * 1000:.0f} ms (ms):")
        print(
            format_table(
                [
                    "mode",
                    "providers",
                    "queries",
                    "p50",
                    "p99",
                    "overhead p50",
                    "overhead p99",
                    "mean",
                ],
                rows,
            )
        )
        print(f"machine busy during the fan-out runs: {busy:.2f} cores")
        print()
        print("Hosted engine (suggest_addresses, 5 addresses, 2,000 accounts on the domain):")
        print(
            format_table(
                ["queries", "queries/s", "addresses/s", "ms/query", "CPU ms/query"],
                [measure_hosted(args.hosted_queries)],
            )
        )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        sys.exit(2)
