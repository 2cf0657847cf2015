"""Push fleet benchmark (issue 9): one real monitor process, EXISTS -> HTTP push, end to end.

Run as `python bench/push_fleet.py [--sessions 1000 10000 15000] [--injections 300]
[--window 60] [--monitor-gc off|watch|freeze]` (docs/benchmarks.md, "Push fleet path").

Everything is real and on this machine's loopback, each in its own process: a private
redis-server (bench/load.py's), a scratch PostgreSQL database (`--database`, dropped
afterwards), the IMAP stub (tests/fakes/imapstub.py, asyncio, TLS with a self-signed P-256
certificate for 127.0.0.1, every user name accepted, collecting garbage rarely while the
sessions log in and, once they are in, frozen and disabled so that its pauses stay out of
the figures), a push receiver (tests/fakes/
push_service.py, a threaded HTTP server recording when each request arrived), one Celery
worker for the `push` queue (threads, 16, as deploy/Procfile) and, for each size, one fresh
`manage.py run_push_monitor` (gevent, queue idle.<id>, in the fleet with all 16,384 shards).
The monitor trusts the stub's certificate through SSL_CERT_FILE (pushproxy.imap verifies
with the system's default store, which OpenSSL reads from there) and has its per-host login
bucket (PUSHPROXY_HOST_LOGINS_PER_SECOND / _BURST) raised so that it does not pace the logins.

Subscriptions go down the production path from the hand-off on: the rows are written in
bulk (what `subscriptions.subscribe` writes, without its per-request netguard checks and
its wait for the login), routed with `monitors.owner_for`, sealed with `sealing.seal`, and
each `watch` command is sent by `subscriptions._hand_off` to the monitor's queue. The
bench keeps at most `--in-flight` hand-offs outstanding (sent, not yet logged in): a sealed
hand-off lives 30 s, so queueing 10,000 at once would let the last ones expire, as a burst
of that size would in production. The monitor logs in (netguard connect, TLS, AUTHENTICATE
PLAIN, EXAMINE), records the subscription active in PostgreSQL and watches it with IDLE.

Per size: the time until every subscription has left `pending` (logins/s), the monitor's
resident memory growth divided by the sessions (from /proc/<pid>/status, after 20 warm-up
sessions), the monitor's CPU over 10 idle seconds, then `--injections` EXISTS spread evenly
over `--window` seconds, each into a different random session: from the stub's write
(CLOCK_MONOTONIC, shared by all processes on Linux) to the receiver's reading of the push
request. That path is session -> 50 ms coalescing gap (PUSHPROXY_COALESCE_SECONDS) ->
Celery `push` queue in Redis -> push worker (PostgreSQL read, HTTP POST) -> receiver. No
push within 10 s counts as missed. The monitor is then drained without pushes (the `drain`
command) and stopped. Bounded in time; loopback only.
"""

from __future__ import annotations

import sys

if sys.argv[1:2] == ["--monitor-gc-wrapper"]:  # GC_WRAPPER, below
    from gevent import monkey

    monkey.patch_all()  # first, as manage.py does for run_push_monitor

import argparse
import gc
import json
import os
import random
import resource
import secrets
import signal
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol, TypeVar

from _common import (
    LOOPBACK,
    BenchError,
    format_table,
    guarded_main,
    machine_busy_s,
    postgres_answers,
    postgres_database,
)
from autoconfig import POSTGRES_ADMIN_DSN, ROOT, VAR
from load import private_redis

GC_WRAPPER = "--monitor-gc-wrapper"
sys.path.insert(0, str(ROOT))  # the fakes (tests/fakes) and, in the children, the project

WARM_UP = 20  # sessions logged in before the memory baseline
MISSED_AFTER_S = 10.0
IDLE_CPU_S = 10.0
# Far above any size here: the host bucket must not pace the benchmark's logins.
HOST_LOGIN_RATE = 1_000_000
DOMAIN = "bench.example.org"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sessions", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--injections", type=int, default=300, help="EXISTS per size")
    parser.add_argument("--window", type=float, default=60.0, help="seconds they spread over")
    parser.add_argument("--database", default="mailportal_push_fleet", help="scratch database")
    parser.add_argument("--concurrency", type=int, default=50, help="the monitor's logins at once")
    parser.add_argument("--in-flight", type=int, default=400, help="hand-offs outstanding")
    parser.add_argument(
        "--monitor-gc",
        choices=["off", "watch", "freeze"],
        default="off",
        help="watch: count the monitor's collections and pauses; freeze: also gc.freeze() "
        "after the logins (the monitor then runs from a wrapper of manage.py, not changed)",
    )
    parser.add_argument("--serve-stub", default="", help=argparse.SUPPRESS)
    parser.add_argument("--serve-receiver", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> int:
    if sys.argv[1:2] == [GC_WRAPPER]:
        return monitor_gc_wrapper(Path(sys.argv[2]), sys.argv[3:])
    args = parse_args()
    if args.serve_stub:
        return serve_stub(Path(args.serve_stub))
    if args.serve_receiver:
        return serve_receiver()
    return guarded_main(VAR, lambda stack: run(args, stack))


# ----- the child processes: IMAP stub and push receiver ------------------------------------


def quiet_collector() -> None:
    """What exists now is never collected, nor is anything later: the children's own
    pauses would otherwise land in the latencies they time."""
    gc.collect()
    gc.freeze()
    gc.disable()


def rare_collector() -> None:
    """Collections rarely (a TLS connection in asyncio leaves cycles behind: with no
    collection at all the stub grew by about 270 KB per login), none of the frozen start."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 1000)


def raise_fd_limit() -> int:
    """The soft open-file limit raised to the hard one (a session is one descriptor)."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def serve_stub(cert_dir: Path) -> int:
    """Child: the IMAP stub over TLS; commands on stdin, one answer line each on stdout."""
    import ssl

    from tests.fakes.imapstub import ImapStub

    raise_fd_limit()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_dir / "cert.pem", cert_dir / "key.pem")
    stub = ImapStub(tls=context, any_user=True).start()
    rare_collector()
    print(f"port {stub.port}", flush=True)
    for line in sys.stdin:
        command, _, argument = line.strip().partition(" ")
        if command == "inject":
            print(f"sent {stub.inject_user(argument)}", flush=True)
        elif command == "idling":
            print(f"idling {stub.idling}", flush=True)
        elif command == "quiet":  # the sessions are in: no collection from now on
            quiet_collector()
            print("quiet ok", flush=True)
        elif command == "quit":
            break
    stub.stop()
    return 0


def serve_receiver() -> int:
    """Child: the push endpoint; `dump` answers every request so far as JSON [path, at]."""
    from tests.fakes.push_service import PushService

    service = PushService().start()
    quiet_collector()
    print(f"port {service.port}", flush=True)
    for line in sys.stdin:
        if line.strip() == "dump":
            received = [[r.path, r.at] for r in list(service.received)]
            print(json.dumps(received), flush=True)
        elif line.strip() == "quit":
            break
    service.stop()
    return 0


def monitor_gc_wrapper(report: Path, arguments: Sequence[str]) -> int:
    """Child: `manage.py run_push_monitor <arguments>` (gevent-patched above), timing every
    garbage collection. SIGUSR2 (Celery leaves it alone) writes the counts so far to
    `report`; with BENCH_GC_FREEZE=1 the first one also collects and freezes what exists
    (the sessions logged in by then), so later collections skip it."""
    pauses: list[tuple[int, float]] = []
    began = [0.0]

    def timing(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            began[0] = time.perf_counter()
        else:
            pauses.append((info["generation"], time.perf_counter() - began[0]))

    def on_signal(_signum: int, _frame: object) -> None:
        per_generation = {
            str(generation): {
                "count": sum(1 for g, _ in pauses if g == generation),
                "total_ms": round(1000 * sum(d for g, d in pauses if g == generation), 1),
                "max_ms": round(
                    1000 * max((d for g, d in pauses if g == generation), default=0), 1
                ),
            }
            for generation in (0, 1, 2)
        }
        report.write_text(json.dumps({"frozen": gc.get_freeze_count(), **per_generation}))
        if os.environ.get("BENCH_GC_FREEZE") == "1" and not gc.get_freeze_count():
            gc.collect()
            gc.freeze()
        pauses.clear()

    gc.callbacks.append(timing)
    signal.signal(signal.SIGUSR2, on_signal)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(["manage.py", "run_push_monitor", *arguments])
    return 0


def gc_report(monitor: Process, report: Path) -> dict[str, Any]:
    """The wrapper's collection counts since the last call (and a freeze, if asked)."""
    report.unlink(missing_ok=True)
    os.kill(monitor.pid, signal.SIGUSR2)
    deadline = time.monotonic() + 10
    while not report.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.2)  # written in one go; let it finish
    answer: dict[str, Any] = json.loads(report.read_text())
    return answer


class Child:
    """A child process of this script spoken to over pipes, one line each way."""

    def __init__(self, name: str, arguments: Sequence[str], env: Mapping[str, str]) -> None:
        self.name = name
        self.process = subprocess.Popen(
            [sys.executable, __file__, *arguments],
            cwd=ROOT,
            env=dict(env),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.port = int(self._read().split()[1])

    def _read(self) -> str:
        assert self.process.stdout is not None  # noqa: S101 - made with a pipe
        line = self.process.stdout.readline()
        if not line:
            raise BenchError(f"{self.name} ended (exit {self.process.poll()})")
        return line

    def ask(self, command: str) -> str:
        assert self.process.stdin is not None  # noqa: S101 - made with a pipe
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self._read().strip()

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                assert self.process.stdin is not None  # noqa: S101
                self.process.stdin.write("quit\n")
                self.process.stdin.close()
                self.process.wait(timeout=20)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()


class Stoppable(Protocol):
    def stop(self) -> None: ...


S = TypeVar("S", bound=Stoppable)


@contextmanager
def stopping(started: S) -> Iterator[S]:
    """Stop what was started (a child or a process) when the block ends, however it ends."""
    try:
        yield started
    finally:
        started.stop()


# ----- the portal's processes --------------------------------------------------------------


@contextmanager
def certificate() -> Iterator[Path]:
    """A directory with cert.pem and key.pem for 127.0.0.1 (an IP SAN), removed afterwards."""
    from tests.fakes.certs import self_signed

    cert = self_signed(LOOPBACK)
    with tempfile.TemporaryDirectory(prefix="bench-push-fleet-") as directory:
        (Path(directory) / "cert.pem").write_bytes(cert.cert_pem)
        (Path(directory) / "key.pem").write_bytes(cert.key_pem)
        yield Path(directory)


def portal_env(
    args: argparse.Namespace, redis_url: str, cert_dir: Path, max_sessions: int
) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("PORTAL_", "DJANGO_", "MAILBOX_", "PUSHPROXY_", "CELERY_"))
        and name not in {"DATABASE_URL", "REDIS_URL", "SECRET_KEY", "SECRET_KEY_FILE"}
    }
    env.update(
        {
            "PYTHONPATH": str(ROOT),  # this checkout, whatever the venv's editable install says
            "PYTHONUNBUFFERED": "1",
            "DJANGO_SETTINGS_MODULE": "portal.settings",
            "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{args.database}",
            "REDIS_URL": redis_url,
            "SECRET_KEY": secrets.token_hex(32),  # shared: seals are made here, opened there
            "PORTAL_EGRESS_ALLOW": "127.0.0.0/8",  # the stub and the receiver
            "PUSHPROXY_ALLOW_PLAINTEXT": "1",  # http:// push endpoints (the receiver)
            "PUSHPROXY_MAX_SESSIONS": str(max_sessions),
            "PUSHPROXY_HOST_LOGINS_PER_SECOND": str(HOST_LOGIN_RATE),
            "PUSHPROXY_HOST_LOGIN_BURST": str(HOST_LOGIN_RATE),
            # pushproxy.imap verifies with ssl.create_default_context(): OpenSSL's default
            # store, which this variable names.
            "SSL_CERT_FILE": str(cert_dir / "cert.pem"),
        }
    )
    return env


class Process:
    """A long-running portal process with its output in a log file."""

    def __init__(self, name: str, command: Sequence[str], env: Mapping[str, str]) -> None:
        self.name = name
        self.log_path = VAR / f"push-fleet-{name}.log"
        self._log: IO[bytes] = self.log_path.open("wb")
        self.process = subprocess.Popen(
            list(command),
            cwd=ROOT,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def wait_for_line(self, needle: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.running():
            if needle in self.log_path.read_text(errors="replace"):
                return
            time.sleep(0.2)
        raise BenchError(f"{self.name} did not start; see {self.log_path}")

    def stop(self, timeout: float = 30) -> None:
        if self.running():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def proc_status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise BenchError(f"no {field} for process {pid}")


def proc_cpu_s(pid: int, *, children: bool = False) -> float:
    """User + system CPU seconds of `pid`; with `children`, also of its children that ended
    (PostgreSQL's backends, one per monitor connection)."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


def find_process(*words: str) -> int | None:
    """The first process whose command line holds every one of `words`."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if all(word in command for word in words):
                return int(entry.name)
    return None


class CpuSnapshot(dict[str, float]):
    def __sub__(self, other: CpuSnapshot) -> CpuSnapshot:
        return CpuSnapshot({name: self[name] - other[name] for name in self})


def cpu_snapshot(**pids: int | None) -> CpuSnapshot:
    """CPU seconds so far of the named processes, this one ("bench") and the machine.
    "postgres" counts the postmaster's ended children too: all databases' backends."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    snapshot = CpuSnapshot(
        {
            name: proc_cpu_s(pid, children=name == "postgres")
            for name, pid in pids.items()
            if pid is not None
        }
    )
    snapshot["bench"] = usage.ru_utime + usage.ru_stime
    snapshot["machine"] = machine_busy_s()
    return snapshot


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# ----- the benchmark ---------------------------------------------------------------------


@dataclass
class Row:
    sessions: int
    login_s: float
    rss_kb_per_session: float
    idle_cpu_percent: float
    latencies_ms: list[float]
    missed: int
    failed: Counter[str]
    lost: int
    load: str

    def cells(self) -> list[str]:
        ordered = sorted(self.latencies_ms)

        def pct(fraction: float) -> str:
            if not ordered:
                return "-"
            return f"{ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]:.1f}"

        return [
            f"{self.sessions:,}",
            f"{self.login_s:.1f}",
            f"{self.sessions / self.login_s:,.0f}",
            f"{self.rss_kb_per_session:.1f}",
            f"{self.idle_cpu_percent:.2f}",
            pct(0.50),
            pct(0.99),
            f"{ordered[-1]:.1f}" if ordered else "-",
            str(self.missed),
        ]


HEADER = [
    "sessions",
    "login s",
    "logins/s",
    "RSS/session KB",
    "idle CPU %",
    "p50 ms",
    "p99 ms",
    "max ms",
    "missed",
]


def run(args: argparse.Namespace, stack: ExitStack) -> int:
    hard = raise_fd_limit()
    biggest = max(args.sessions) + WARM_UP
    if biggest + 200 > hard:
        raise BenchError(
            f"{biggest} sessions need as many descriptors in the monitor and in the stub; "
            f"the hard open-file limit is {hard}"
        )
    low, high = (int(n) for n in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    if biggest + 500 > high - low + 1:
        raise BenchError(f"{biggest} connections to one port need more than {low}-{high}")
    version = postgres_answers(POSTGRES_ADMIN_DSN)
    if version is None:
        raise BenchError("PostgreSQL does not answer on 127.0.0.1:5432 (user postgres)")
    stack.enter_context(postgres_database(args.database, admin_dsn=POSTGRES_ADMIN_DSN))
    redis_url = stack.enter_context(private_redis())
    cert_dir = stack.enter_context(certificate())
    env = portal_env(args, redis_url, cert_dir, max_sessions=biggest + 100)
    os.environ.update(env)  # this process writes the rows and sends the hand-offs
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    redis_version = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, check=False
    ).stdout.split()[2]
    print(
        f"PostgreSQL {version} (database {args.database}), private Redis "
        f"({redis_version}), open-file limit {hard}, local ports {low}-{high}\n"
        f"PUSHPROXY_HOST_LOGINS_PER_SECOND and _BURST raised to {HOST_LOGIN_RATE:,} so that "
        f"the host login bucket does not pace the benchmark (production: 20/s, burst 40)\n"
        f"monitor: --concurrency {args.concurrency}; at most {args.in_flight} hand-offs "
        f"outstanding; {args.injections} EXISTS over {args.window:.0f} s per size",
        flush=True,
    )
    push = stack.enter_context(
        stopping(Process(
            "push-worker",
            [sys.executable, "-m", "celery", "-A", "portal", "worker", "-Q", "push",
             "-P", "threads", "-c", "16", "-n", f"bench-push-{os.getpid()}@%h",
             "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "INFO"],
            env,
        ))
    )  # fmt: skip
    push.wait_for_line("ready.", timeout=60)
    rows = []
    for index, size in enumerate(args.sessions):
        print(f"\n{size:,} sessions (load average {load_average()})", flush=True)
        row = measure(size, index, args, env, cert_dir)
        rows.append(row)
        print(format_table(HEADER, [row.cells()]), flush=True)
    print(f"\nload average at the end: {load_average()}\n")
    print(format_table(HEADER, [row.cells() for row in rows]))
    for row in rows:
        if row.failed or row.lost:
            print(f"{row.sessions:,}: failed logins {dict(row.failed)}, lost sessions {row.lost}")
    return 0


def measure(
    size: int, index: int, args: argparse.Namespace, base_env: Mapping[str, str], cert_dir: Path
) -> Row:
    from django.conf import settings

    from pushproxy import fleet
    from pushproxy.models import MonitorWorker, PushSubscription

    PushSubscription.objects.all().delete()
    MonitorWorker.objects.all().delete()
    # A fleet of its own per size: nothing of the previous monitor's leases is left to route to.
    prefix = f"bench{index}:"
    settings.PUSHPROXY_FLEET_PREFIX = prefix
    env = {**base_env, "PUSHPROXY_FLEET_PREFIX": prefix}
    worker_id = f"bench-{size}-{os.getpid()}"
    with ExitStack() as stack:
        stub_child = Child("IMAP stub", ["--serve-stub", str(cert_dir)], env)
        stub = stack.enter_context(stopping(stub_child))
        receiver = stack.enter_context(stopping(Child("push receiver", ["--serve-receiver"], env)))
        command = ["run_push_monitor", "--id", worker_id, "--concurrency",
                   str(args.concurrency), "--loglevel", "WARNING"]  # fmt: skip
        gc_path = VAR / f"push-fleet-gc-{size}.json"
        if args.monitor_gc == "off":
            command = [sys.executable, "manage.py", *command]
        else:
            command = [sys.executable, __file__, GC_WRAPPER, str(gc_path), *command[1:]]
            env["BENCH_GC_FREEZE"] = "1" if args.monitor_gc == "freeze" else "0"
        monitor = stack.enter_context(stopping(Process(f"monitor-{size}", command, env)))
        deadline = time.monotonic() + 60
        while fleet.live_monitors().get(worker_id, 0) < fleet.SHARDS:
            if time.monotonic() > deadline or not monitor.running():
                raise BenchError(f"the monitor did not join the fleet; see {monitor.log_path}")
            time.sleep(0.2)

        make = Subscriptions(stub_port=stub.port, receiver_port=receiver.port)
        make.log_in(make.create(range(size, size + WARM_UP)), in_flight=args.in_flight)
        wait_idling(stub, WARM_UP)
        time.sleep(2.0)
        baseline_kb = proc_status_kb(monitor.pid, "VmRSS")

        pending = make.create(range(size))
        servers = {
            "monitor": monitor.pid,
            "stub": stub.process.pid,
            "push worker": find_process("celery", "-Q push", f"bench-push-{os.getpid()}"),
            "redis": find_process("redis-server", base_env["REDIS_URL"].split(":")[-1][:-2]),
            "postgres": find_process("postgres", "-D"),
        }
        cpu_at = cpu_snapshot(**servers)
        started = time.monotonic()
        make.log_in(pending, in_flight=args.in_flight)
        login_s = time.monotonic() - started
        used = cpu_snapshot(**servers) - cpu_at
        print(
            f"CPU seconds while logging in ({login_s:.1f} s, 2 cores = {2 * login_s:.0f}): "
            + ", ".join(f"{name} {seconds:.1f}" for name, seconds in used.items()),
            flush=True,
        )
        failed = make.failures()
        active = size - sum(failed.values())
        wait_idling(stub, active + WARM_UP)
        stub.ask("quiet")
        if args.monitor_gc != "off":
            print(f"monitor GC while logging in: {gc_report(monitor, gc_path)}", flush=True)
        time.sleep(2.0)
        per_session_kb = (proc_status_kb(monitor.pid, "VmRSS") - baseline_kb) / size
        fds = len(os.listdir(f"/proc/{monitor.pid}/fd"))
        print(
            f"logged in: {active:,} of {size:,} in {login_s:.1f} s; monitor RSS "
            f"{proc_status_kb(monitor.pid, 'VmRSS') / 1024:.0f} MB, {fds} descriptors",
            flush=True,
        )

        cpu_before = proc_cpu_s(monitor.pid)
        time.sleep(IDLE_CPU_S)
        idle_cpu = 100 * (proc_cpu_s(monitor.pid) - cpu_before) / IDLE_CPU_S

        latencies, missed = inject(
            stub, receiver, size, failed_users=make.failed_users(), args=args
        )
        lost = sum(1 for path, _at in json.loads(receiver.ask("dump")) if path.startswith("/r/"))
        load = load_average()
        if args.monitor_gc != "off":
            print(f"monitor GC since (idle, injections): {gc_report(monitor, gc_path)}")

        drained = make.drain(worker_id)
        print(f"drained {drained} sessions (no pushes)", flush=True)
        monitor.stop(timeout=40)
    return Row(size, login_s, per_session_kb, idle_cpu, latencies, missed, failed, lost, load)


def wait_idling(stub: Child, count: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while int(stub.ask("idling").split()[1]) < count:
        if time.monotonic() > deadline:
            raise BenchError(f"fewer than {count} sessions idle at the stub")
        time.sleep(0.2)


def user(number: int) -> str:
    return f"user{number}@{DOMAIN}"


class Subscriptions:
    """The subscriptions of one size, from rows to logged-in sessions."""

    def __init__(self, *, stub_port: int, receiver_port: int) -> None:
        self.stub_port = stub_port
        self.receiver = f"http://{LOOPBACK}:{receiver_port}"
        self.created: list[int] = []  # primary keys

    def _mailbox(self, number: int) -> Any:
        from pushproxy import imap

        return imap.Mailbox(LOOPBACK, self.stub_port, imap.TLS, user(number), "INBOX")

    def create(self, numbers: range) -> list[Any]:
        """Pending rows as `subscriptions.subscribe` writes them (one device per account;
        newMail to /n/<number>, reconnect to /r/<number>), each routed to its owner."""
        from pushproxy.models import EndpointFormat, PushSubscription, token_hash, username_hash
        from pushproxy.services import monitors

        rows, owners = [], []
        for number in numbers:
            mailbox = self._mailbox(number)
            owner = monitors.owner_for(mailbox.account_key)
            owners.append(owner)
            rows.append(
                PushSubscription(
                    token_hash=token_hash(secrets.token_urlsafe(32)),
                    account_key=mailbox.account_key,
                    client_id="bench-device",
                    host=LOOPBACK,
                    port=self.stub_port,
                    security=mailbox.security,
                    username=mailbox.username,
                    username_hash=username_hash(mailbox.username),
                    mailbox="INBOX",
                    new_mail_url=f"{self.receiver}/n/{number}",
                    new_mail_format=EndpointFormat.JSON,
                    reconnect_url=f"{self.receiver}/r/{number}",
                    reconnect_format=EndpointFormat.JSON,
                    monitor=owner.worker_id,
                    awaited=False,  # nobody waits: a late failure would be pushed
                )
            )
        created = PushSubscription.objects.bulk_create(rows, batch_size=2000)
        self.created += [row.pk for row in created]
        return list(zip(created, numbers, owners, strict=True))

    def log_in(self, pending: list[Any], *, in_flight: int, timeout: float = 600.0) -> None:
        """Seal and hand off each one, at most `in_flight` outstanding; back once none is
        pending any more."""
        from pushproxy import sealing
        from pushproxy.models import PushSubscription, Status
        from pushproxy.services import subscriptions
        from tests.fakes.imapstub import PASSWORD

        pks = [row.pk for row, _number, _owner in pending]
        # A range, not pk__in: a query with 10,000 parameters five times a second cost this
        # process (sharing the two cores with the monitor) 8 ms of CPU per login.
        waiting = PushSubscription.objects.filter(
            pk__gte=min(pks), pk__lte=max(pks), status=Status.PENDING
        )
        deadline = time.monotonic() + timeout
        sent = 0
        left = len(pending)
        while left:
            if time.monotonic() > deadline:
                raise BenchError(f"{left} of {len(pending)} logins did not finish in {timeout} s")
            done = len(pending) - left
            while sent < len(pending) and sent - done < in_flight:
                row, number, owner = pending[sent]
                mailbox = self._mailbox(number)
                sealed = sealing.seal(
                    username=mailbox.username,
                    password=sealing.Secret(PASSWORD),
                    context=subscriptions.seal_context(row.public_id, row.pk, owner.queue),
                )
                if subscriptions._hand_off(row, mailbox, owner, sealed) is None:
                    raise BenchError("the broker refused a hand-off")
                sent += 1
            time.sleep(0.2)
            left = waiting.count()

    def failures(self) -> Counter[str]:
        from pushproxy.models import PushSubscription, Status

        rows = PushSubscription.objects.filter(pk__in=self.created).exclude(status=Status.ACTIVE)
        return Counter(f"{s}:{e}" for s, e in rows.values_list("status", "error"))

    def failed_users(self) -> set[str]:
        from pushproxy.models import PushSubscription, Status

        rows = PushSubscription.objects.filter(pk__in=self.created).exclude(status=Status.ACTIVE)
        return set(rows.values_list("username", flat=True))

    def drain(self, worker_id: str) -> int:
        """The monitor's `drain` command: every session logged out, no reconnect pushes."""
        from pushproxy import tasks
        from pushproxy.services import monitors

        result = tasks.drain.apply_async(
            kwargs={"notify": False, "reopen": False}, queue=monitors.queue_name(worker_id)
        )
        return int(result.get(timeout=60))


def inject(
    stub: Child, receiver: Child, size: int, *, failed_users: set[str], args: argparse.Namespace
) -> tuple[list[float], int]:
    """EXISTS into `--injections` distinct random sessions, evenly over `--window` seconds;
    the stub-write -> push-received latencies (ms) and how many got no push in time."""
    rng = random.Random(9)  # which sessions: the same in every run
    candidates = [n for n in range(size) if user(n) not in failed_users]
    chosen = rng.sample(candidates, min(args.injections, len(candidates)))
    step = args.window / max(1, len(chosen))
    sent: list[tuple[int, float]] = []
    began = time.monotonic()
    for k, number in enumerate(chosen):
        pause = began + k * step - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        answer = stub.ask(f"inject {user(number)}").split()[1]
        if answer != "None":
            sent.append((number, float(answer)))
    time.sleep(MISSED_AFTER_S)
    arrivals: dict[str, list[float]] = {}
    for path, at in json.loads(receiver.ask("dump")):
        arrivals.setdefault(path, []).append(at)
    latencies = []
    for number, at in sent:
        seen = [t for t in arrivals.get(f"/n/{number}", []) if t >= at - 0.001]
        if seen and min(seen) - at <= MISSED_AFTER_S:
            latencies.append(1000 * (min(seen) - at))
    missed = len(chosen) - len(latencies)
    return latencies, missed


if __name__ == "__main__":
    sys.exit(main())
