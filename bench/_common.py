"""Shared benchmark helpers: a lean loopback HTTP load client, gunicorn processes, services.

Every benchmark under bench/ runs its servers on this machine's loopback only, with request
loops bounded in count and in time. Linux only (epoll, /proc).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import math
import multiprocessing
import os
import platform
import re
import resource
import select
import signal
import socket
import subprocess
import sys
import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO

LOOPBACK = "127.0.0.1"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# ---------------------------------------------------------------------------------------------
# The load client
# ---------------------------------------------------------------------------------------------


@dataclass
class LoadResult:
    """What one load run saw; results of several client processes add up with merge()."""

    requested: int
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    latencies_ns: array[int] = field(default_factory=lambda: array("q"))
    started_ns: int = 0
    ended_ns: int = 0
    client_cpu_s: float = 0.0

    @property
    def wall_s(self) -> float:
        return max(self.ended_ns - self.started_ns, 1) / 1e9

    @property
    def requests_per_s(self) -> float:
        return self.ok / self.wall_s

    def percentile_ms(self, fraction: float) -> float:
        """Nearest-rank percentile of the successful requests' latencies, in milliseconds."""
        if not self.latencies_ns:
            return float("nan")
        ordered = sorted(self.latencies_ns)
        rank = max(0, min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1))
        return ordered[rank] / 1e6

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def merge(self, other: LoadResult) -> None:
        self.requested += other.requested
        self.ok += other.ok
        self.errors.update(other.errors)
        self.latencies_ns.extend(other.latencies_ns)
        self.started_ns = min(self.started_ns, other.started_ns)
        self.ended_ns = max(self.ended_ns, other.ended_ns)
        self.client_cpu_s += other.client_cpu_s


def _cpu_seconds_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _Flight:
    """One request in flight: its socket, when it began, the first bytes of the answer."""

    __slots__ = ("begun", "head", "request", "sent", "sock")

    def __init__(self, sock: socket.socket, begun: int, request: bytes) -> None:
        self.sock = sock
        self.begun = begun
        self.request = request
        self.head = b""
        self.sent = False


def run_load(
    *,
    port: int,
    request: bytes | Sequence[bytes],
    total: int,
    concurrency: int,
    expect_status: int = 200,
    timeout_s: float = 10.0,
    time_limit_s: float = 300.0,
) -> LoadResult:
    """Send `total` copies of `request`, each on a new TCP connection, `concurrency` at a time.

    `request` may also be a sequence of `total` requests, sent in order (requests that must
    differ, such as registrations of distinct accounts); build them all before the call.

    One epoll loop over non-blocking sockets: one connect, send, recv or two and close per
    request, so that the client costs little CPU next to the server on a small machine. The
    server must close the connection after its answer (HTTP/1.0, or `Connection: close`);
    latency runs from socket creation to that close. A request is counted ok when the status
    line carries `expect_status`; anything else is counted by reason. The run stops after
    `time_limit_s` whatever is left, counting the rest as errors ("time limit").
    """
    requests = [request] * total if isinstance(request, bytes) else list(request)
    if len(requests) != total:
        raise ValueError(f"{len(requests)} requests given for total={total}")
    result = LoadResult(requested=total)
    address = (LOOPBACK, port)
    poller = select.epoll()
    in_flight: dict[int, _Flight] = {}
    started = 0
    status_prefix = f" {expect_status} ".encode()
    latencies = result.latencies_ns
    errors = result.errors
    perf_ns = time.perf_counter_ns
    timeout_ns = int(timeout_s * 1e9)
    poll_in, poll_out = select.EPOLLIN, select.EPOLLOUT

    def start_one() -> None:
        nonlocal started
        started += 1
        payload = requests[started - 1]
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        begun = perf_ns()
        code = sock.connect_ex(address)
        if code not in (0, errno.EINPROGRESS):
            errors[f"connect: {errno.errorcode.get(code, code)}"] += 1
            sock.close()
            return
        fd = sock.fileno()
        in_flight[fd] = _Flight(sock, begun, payload)
        poller.register(fd, poll_out)

    def finish(fd: int, reason: str | None) -> None:
        flight = in_flight.pop(fd)
        flight.sock.close()  # also takes it out of the epoll set
        if reason is not None:
            errors[reason] += 1
        elif flight.head[8:13] == status_prefix:
            latencies.append(perf_ns() - flight.begun)
        else:
            errors[f"status {flight.head[9:12].decode('latin-1') or 'none'}"] += 1

    cpu_before = _cpu_seconds_self()
    result.started_ns = perf_ns()
    deadline_ns = result.started_ns + int(time_limit_s * 1e9)
    next_sweep_ns = result.started_ns + 1_000_000_000
    while started < min(concurrency, total):
        start_one()
    while in_flight or started < total:
        for fd, _events in poller.poll(0.1):
            flight = in_flight.get(fd)
            if flight is None:
                continue
            reason: str | None = None
            try:
                if not flight.sent:
                    # Writable: connected (or failed, which send() raises). Small requests
                    # go out in one send on loopback.
                    flight.sock.send(flight.request)
                    flight.sent = True
                    poller.modify(fd, poll_in)
                    continue
                # Read all there is: the answer and its FIN mostly arrive together.
                while chunk := flight.sock.recv(65536):
                    if len(flight.head) < 16:
                        flight.head += chunk
            except BlockingIOError:
                continue
            except OSError as exc:
                reason = f"socket: {errno.errorcode.get(exc.errno or 0, exc.errno)}"
            finish(fd, reason)
            if started < total:
                start_one()
        while len(in_flight) < concurrency and started < total:
            start_one()  # refill after failed connects
        now = perf_ns()
        if now >= next_sweep_ns:
            next_sweep_ns = now + 1_000_000_000
            if now >= deadline_ns:
                for fd in list(in_flight):
                    finish(fd, "time limit")
                errors["time limit"] += total - started
                break
            for fd in [fd for fd, f in in_flight.items() if now - f.begun > timeout_ns]:
                finish(fd, "timeout")
    result.ended_ns = perf_ns()
    result.ok = len(latencies)
    result.client_cpu_s = _cpu_seconds_self() - cpu_before
    poller.close()
    return result


@dataclass(frozen=True)
class _Share:
    """One client process's part of run_load_parallel()."""

    port: int
    request: bytes
    total: int
    concurrency: int
    timeout_s: float
    time_limit_s: float


def _run_share(share: _Share) -> LoadResult:
    return run_load(
        port=share.port,
        request=share.request,
        total=share.total,
        concurrency=share.concurrency,
        timeout_s=share.timeout_s,
        time_limit_s=share.time_limit_s,
    )


def run_load_parallel(
    *,
    port: int,
    request: bytes,
    total: int,
    concurrency: int,
    processes: int = 1,
    timeout_s: float = 10.0,
    time_limit_s: float = 300.0,
) -> LoadResult:
    """run_load() split over `processes` client processes (requests and concurrency shared)."""
    shares = [
        _Share(
            port=port,
            request=request,
            total=total // processes + (index < total % processes),
            concurrency=max(1, concurrency // processes + (index < concurrency % processes)),
            timeout_s=timeout_s,
            time_limit_s=time_limit_s,
        )
        for index in range(max(processes, 1))
    ]
    if len(shares) == 1:
        return _run_share(shares[0])
    # spawn: the workers start clean (no inherited server handles), and only import this module.
    with multiprocessing.get_context("spawn").Pool(len(shares)) as pool:
        parts = pool.map(_run_share, shares)
    merged = parts[0]
    for part in parts[1:]:
        merged.merge(part)
    return merged


def http_request(
    method: str,
    path: str,
    *,
    host: str,
    headers: Mapping[str, str] | None = None,
    body: bytes = b"",
) -> bytes:
    """The raw bytes of one HTTP/1.1 request that asks the server to close the connection."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if body or method in {"POST", "PUT"}:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


def fetch(port: int, request: bytes, *, timeout_s: float = 10.0) -> Response:
    """Send one raw request to the loopback port and parse the answer (for checks, not load)."""
    with socket.create_connection((LOOPBACK, port), timeout=timeout_s) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Response(int(status_line.split()[1]), headers, body)


# ---------------------------------------------------------------------------------------------
# Servers
# ---------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def port_answers(port: int, host: str = LOOPBACK, timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def process_tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of `pid` and its direct children (gunicorn master + workers)."""
    pids = [pid]
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if _proc_stat(int(entry.name))[1] == pid:
                    pids.append(int(entry.name))
    total = 0
    for each in pids:
        with contextlib.suppress(OSError):
            total += _proc_stat(each)[0]
    return total / CLOCK_TICKS


def machine_busy_s() -> float:
    """CPU seconds all cores of the machine have spent busy (not idle or iowait) since boot."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    # user nice system idle iowait irq softirq steal; guest time is counted in user already,
    # steal is another virtual machine's.
    user, nice, system, _idle, _iowait, irq, softirq = (int(value) for value in fields[:7])
    return (user + nice + system + irq + softirq) / CLOCK_TICKS


def _proc_stat(pid: int) -> tuple[int, int]:
    """(utime + stime in ticks, parent pid) from /proc/<pid>/stat."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()  # the command name may hold spaces
    return int(fields[11]) + int(fields[12]), int(fields[1])


class Server:
    """A server process on a loopback port, stopped (SIGTERM, then SIGKILL) on exit."""

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        *,
        port: int,
        env: Mapping[str, str],
        cwd: Path,
        log_path: Path,
    ) -> None:
        self.name = name
        self.command = list(command)
        self.port = port
        self.env = dict(env)
        self.cwd = cwd
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def __enter__(self) -> Server:
        if port_answers(self.port):  # else we would measure whoever holds it
            raise RuntimeError(f"{self.name}: port {self.port} is already in use")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            self.command,
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while not port_answers(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} did not start; see {self.log_path}")
            time.sleep(0.1)
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError(f"{self.name} is not running")
        return self.process.pid

    def cpu_s(self) -> float:
        return process_tree_cpu_s(self.pid)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None


def gunicorn_command(
    gunicorn: Path, app: str, *, port: int, workers: int, extra: Sequence[str] = ()
) -> list[str]:
    """gunicorn with sync workers and no access log (writing it costs per request)."""
    return [
        str(gunicorn),
        app,
        "--workers",
        str(workers),
        "--worker-class",
        "sync",
        "--bind",
        f"{LOOPBACK}:{port}",
        "--log-level",
        "warning",
        *extra,
    ]


# ---------------------------------------------------------------------------------------------
# Services and the machine
# ---------------------------------------------------------------------------------------------


class BenchError(Exception):
    """The benchmark could not run (as opposed to: the target was missed)."""


def stop_on_sigterm(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds the ExitStack: servers stopped, database dropped


def guarded_main(var: Path, body: Callable[[ExitStack], int]) -> int:
    """A benchmark's main() around `body`: SIGTERM unwinds it, one benchmark at a time (the
    lock under `var`), the machine printed first; whatever `body` enters on the ExitStack
    (servers, databases) is stopped or dropped on the way out. Exit 2 when it could not run."""
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    var.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine_description()}", flush=True)
    try:
        with ExitStack() as stack:
            stack.enter_context(exclusive_run(var / "bench.lock"))
            return body(stack)
    except (BenchError, RuntimeError, OSError, ValueError) as exc:
        print(f"\nbenchmark could not run: {exc}", file=sys.stderr)
        return 2


@contextlib.contextmanager
def exclusive_run(lock_path: Path) -> Iterator[None]:
    """Refuse to run beside another benchmark: they would share databases and CPU."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise RuntimeError(f"a benchmark is already running ({holder}); wait for it") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}: {' '.join(sys.argv)}")
        handle.flush()
        yield  # the lock goes with the file's closing, even if this process is killed


def redis_answers(port: int = 6379, host: str = LOOPBACK) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def postgres_database(name: str, *, admin_dsn: str) -> Iterator[None]:
    """Create the database `name` (dropping a leftover first) and drop it on the way out."""
    import psycopg  # the project's venv has it; imported here so the client needn't

    if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
        raise ValueError(f"not a plain database name: {name!r}")
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {name}")
    try:
        yield
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def postgres_answers(admin_dsn: str) -> str | None:
    """The server version if PostgreSQL accepts the admin connection, else None."""
    try:
        import psycopg

        with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=2) as admin:
            row = admin.execute("SHOW server_version").fetchone()
    except Exception:
        return None
    return str(row[0]) if row else None


def machine_description() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (
        f"{os.cpu_count()} CPUs ({model}), Linux {platform.release()}, "
        f"Python {sys.version.split()[0]}"
    )


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table, also valid Markdown."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), rule, *(line(row) for row in rows)])
