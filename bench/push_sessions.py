"""Push session benchmark (issue 8): what one monitor process pays per IMAP IDLE session.

Run as `.venv/bin/python bench/push_sessions.py [--sessions 1000 3000] [--injections 200]`.

This process is gevent-patched like `manage.py run_push_monitor` and runs the real session
code: `pushproxy.imap.open_session` logs in (AUTHENTICATE PLAIN, EXAMINE) and the real
`pushproxy.monitor.Manager` watches every session in its own greenlet with production
timing (IDLE re-issued every 25 min, 50 ms coalescing gap). Only the sink differs: it
records the time of each newMail event instead of queueing a push job, so the figures are
the monitor's own, without Redis or HTTP.

The IMAP server is tests/fakes/imapstub.py (asyncio) in a child process started by this
script (`--serve-stub`), on loopback, plain and TLS (a self-signed P-256 certificate). For
each size: logins with 50 in flight (wall time, logins/s), resident memory per session
(RSS growth / sessions, after the sessions idle), CPU of this process over 10 idle seconds,
then EXISTS injected into one random session at a time: time from the stub's write to the
sink's callback, p50/p99 (the 50 ms coalescing gap included: a single message is pushed
when no second one follows within it). Bounded in count and time; loopback only.
"""

from __future__ import annotations

import sys

if "--serve-stub" not in sys.argv:
    from gevent import monkey

    monkey.patch_all()  # first, as manage.py does for run_push_monitor

import argparse
import gc
import json
import os
import random
import resource
import socket
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the stub lives with the test fakes (tests/fakes/imapstub.py)


def serve_stub(tls_cert: str) -> None:
    """Child process: the IMAP stub; commands on stdin, answers on stdout."""
    from tests.fakes.certs import self_signed
    from tests.fakes.imapstub import ImapStub

    context = None
    if tls_cert:
        cert = self_signed("imap.bench.test")
        Path(tls_cert).write_bytes(cert.cert_pem)
        context = cert.server_context()
    stub = ImapStub(tls=context).start()
    print(f"port {stub.port}", flush=True)
    for line in sys.stdin:
        command, _, argument = line.strip().partition(" ")
        if command == "inject":
            print(f"sent {stub.inject(int(argument))}", flush=True)
        elif command == "idling":
            print(f"idling {sum(1 for c in stub._conns if c.idle_tag)}", flush=True)
        elif command == "quit":
            break
    stub.stop()


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run(sessions: int, tls: bool, injections: int) -> list[str]:
    import ssl

    import gevent
    from gevent.pool import Pool

    from pushproxy import imap, monitor
    from pushproxy.sealing import Secret
    from tests.fakes.imapstub import PASSWORD, USER

    cert_path = tempfile.mktemp(prefix="bench-imap-", suffix=".pem") if tls else ""  # noqa: S306
    stub = subprocess.Popen(
        [sys.executable, __file__, "--serve-stub", "--tls-cert", cert_path],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    if stub.stdin is None or stub.stdout is None:
        raise RuntimeError("the stub's pipes are missing")

    def ask(command: str) -> str:
        stub.stdin.write(command + "\n")  # type: ignore[union-attr]
        stub.stdin.flush()  # type: ignore[union-attr]
        return stub.stdout.readline().split()[1]  # type: ignore[union-attr]

    port = int(stub.stdout.readline().split()[1])
    context = ssl.create_default_context(cadata=Path(cert_path).read_text()) if tls else None

    arrivals: list[float] = []  # newMail callbacks, in order
    losses: list[str] = []

    class Sink:
        def new_mail(self, *, subscription: str, generation: int, exists: int, event: str) -> None:
            arrivals.append(time.monotonic())

        def lost(self, *, subscription: str, generation: int, reason: str, event: str) -> None:
            losses.append(reason)

    manager = monitor.Manager(
        sink=Sink(),
        timing=monitor.Timing.from_settings(),
        max_sessions=sessions,
        max_per_account=1,
    )
    target = imap.Mailbox(
        "imap.bench.test" if tls else "127.0.0.1", port, "tls" if tls else "none", USER
    )

    def login(index: int) -> None:
        session = imap.open_session(
            target,
            Secret(PASSWORD),
            connect=lambda: socket.create_connection(("127.0.0.1", port), timeout=15),
            timeout=15,
            ssl_context=context,
        )
        manager.adopt(monitor.Watched(f"s{index}", index + 1, f"account{index}", "bench", session))

    # Warm up (imports, TLS context, first allocations) before the baseline.
    login(sessions)
    manager.drain(reason="warm-up", notify=False, wait=5, reopen=True)
    gc.collect()
    baseline = rss_kb()
    started = time.monotonic()
    Pool(50).map(login, range(sessions))
    login_s = time.monotonic() - started
    deadline = time.monotonic() + 60
    while int(ask("idling")) < sessions and time.monotonic() < deadline:  # all in IDLE
        gevent.sleep(0.1)
    gevent.sleep(1.0)
    gc.collect()
    per_session_kb = (rss_kb() - baseline) / sessions

    cpu_before = cpu_s()
    gevent.sleep(10.0)
    idle_cpu = (cpu_s() - cpu_before) / 10.0 * 100

    # One injection at a time into a random session: the next callback is its push.
    latencies: list[float] = []
    for _ in range(injections):
        seen = len(arrivals)
        sent = float(ask(f"inject {random.randrange(sessions)}"))
        wait_until = time.monotonic() + 2.0
        while len(arrivals) == seen and time.monotonic() < wait_until:
            gevent.sleep(0.001)
        if len(arrivals) > seen:
            latencies.append((arrivals[seen] - sent) * 1000)
        gevent.sleep(0.02)
    latencies.sort()
    missed = injections - len(latencies)

    manager.drain(reason="bench over", notify=False, wait=30)
    ask("idling")
    stub.stdin.write("quit\n")
    stub.stdin.flush()
    stub.wait(30)
    if cert_path:
        os.unlink(cert_path)

    def pct(fraction: float) -> str:
        if not latencies:
            return "-"
        return f"{latencies[min(len(latencies) - 1, int(fraction * len(latencies)))]:.1f}"

    return [
        f"{sessions:,}",
        "TLS" if tls else "plain",
        f"{login_s:.1f}",
        f"{sessions / login_s:,.0f}",
        f"{per_session_kb:.1f}",
        f"{idle_cpu:.2f}",
        pct(0.50),
        pct(0.99),
        str(missed),
        str(len(losses)),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, nargs="+", default=[1000, 3000])
    parser.add_argument("--injections", type=int, default=200)
    parser.add_argument("--serve-stub", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tls-cert", default="", help=argparse.SUPPRESS)
    parser.add_argument("--run", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--tls", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_stub:
        serve_stub(args.tls_cert)
        return 0
    if args.run:
        # One measurement per process, so that one run's heap does not flatter the next.
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
        os.environ.pop("REDIS_URL", None)
        import django

        django.setup()
        print(json.dumps(run(args.run, bool(args.tls), args.injections)))
        return 0

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import format_table

    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    rows = []
    for size in args.sessions:
        if size + 100 > soft:
            print(f"skipping {size} sessions: the open-file limit is {soft}")
            continue
        for tls in (0, 1):
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--run",
                    str(size),
                    "--tls",
                    str(tls),
                    "--injections",
                    str(args.injections),
                ],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
    header = [
        "sessions",
        "transport",
        "login s",
        "logins/s",
        "RSS/session KB",
        "idle CPU %",
        "EXISTS→sink p50 ms",
        "p99 ms",
        "missed",
        "lost",
    ]
    print(format_table(header, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
