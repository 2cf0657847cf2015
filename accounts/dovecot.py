"""A private Dovecot instance for trying the portal and for the tests (deploy/dovecot/).

`PrivateDovecot` renders a configuration from the shipped files in ``deploy/dovecot/`` and
runs Debian's ``dovecot`` with it on 127.0.0.1:<port>, everything under one state
directory: so the configuration the tests log in to is the one operators install.

What is changed, and why only this:

- **Appended overrides** (Dovecot keeps the last value of a setting and merges a repeated
  ``service`` block): base_dir, state_dir, log_path, the listener (loopback, our port, no
  993), no TLS with plaintext logins allowed (loopback only), mail_home under the state
  directory, and the users the processes run as (below).
- **Two textual replacements**, where Dovecot's parser leaves no other way: the passdb and
  userdb ``args`` path (an unnamed passdb block cannot be overridden, a second one would
  add a second passdb) and the ``ssl_cert``/``ssl_key`` lines (``<file`` is read while
  parsing, even with ``ssl = no``). Both are required to be present, so a change to the
  shipped file that would leave them untested fails loudly here.
- The SQL file is the shipped ``dovecot-sql-<driver>.conf.ext`` with its ``connect`` line
  pointed at the given Django database.

Users: as root, mail runs as the ``dovecot`` system user of the Debian package (Dovecot
refuses mail access as root and there is no ``vmail`` user here), and the SQLite auth
worker runs as the database file's owner (a WAL reader must be able to create the
-wal/-shm files; deploy/dovecot/README.md recommends the same). As any other user,
every process runs as that user, without chroots ("rootless" Dovecot).

Dovecot daemonizes into its own session and process group, so `stop` can wait for the
whole group, and a PostgreSQL test database can be dropped at once afterwards. Passwords
given to `auth_test` appear briefly in this machine's process list: a tool for tests and
demos, not for production secrets.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings

DEFAULT_PORT = 10143
LOOPBACK = "127.0.0.1"
# The path the shipped dovecot.conf names for the SQL file (see its header).
SHIPPED_SQL_ARGS = "/etc/dovecot/dovecot-sql.conf.ext"
# Dovecot's binaries live in /usr/sbin, which is not on an ordinary user's PATH.
_EXTRA_PATH = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")
BINARIES = ("dovecot", "doveadm", "doveconf")
# Exit status of `doveadm auth test` for a refused login (EX_NOPERM).
_AUTH_REFUSED = 77
# `doveadm user` for an unknown user (EX_NOUSER); a temporary failure is 75 (EX_TEMPFAIL).
_USER_UNKNOWN = 67
# State paths go into a Dovecot config where %, $, # and quotes mean something; and
# base_dir holds UNIX sockets, whose paths are limited to 107 bytes.
_SAFE_PATH = re.compile(r"^/[A-Za-z0-9_./+@,=-]+$")
_MAX_BASE_DIR = 80
# libpq connection keywords passed on from Django's OPTIONS; the others (isolation level,
# pool, ...) are psycopg's, not the server connection's.
_LIBPQ_OPTIONS = frozenset(
    {
        "connect_timeout",
        "sslmode",
        "sslrootcert",
        "sslcert",
        "sslkey",
        "sslcrl",
        "application_name",
        "options",
        "target_session_attrs",
        "gssencmode",
    }
)
# Services whose default chroot needs root; cleared when running rootless.
_CHROOTED_SERVICES = ("anvil", "imap-login", "ipc")


class DovecotError(Exception):
    """Dovecot is missing, would not start, or a doveadm command failed."""


@dataclass(frozen=True)
class Session:
    """One connected IMAP session, as `doveadm who -1` lists it."""

    username: str
    protocol: str
    pid: int
    ip: str


@dataclass(frozen=True)
class QuotaResource:
    """One line of `doveadm quota get`: usage and limit (None: no limit).

    STORAGE is in KiB, MESSAGE in messages, as Dovecot reports them.
    """

    root: str
    kind: str
    value: int
    limit: int | None


@dataclass(frozen=True)
class _RunAs:
    """Which users the private instance's processes run as (see the module docstring)."""

    lines: tuple[str, ...]
    mail_uid: int
    mail_gid: int


def find_binary(name: str) -> str | None:
    """The path of a Dovecot program, also looking in /usr/sbin."""
    path = os.pathsep.join([os.environ.get("PATH", ""), *_EXTRA_PATH])
    return shutil.which(name, path=path)


def missing_binaries() -> list[str]:
    """The Dovecot programs that are not installed (empty: all are)."""
    return [name for name in BINARIES if find_binary(name) is None]


def shipped_dir() -> Path:
    """deploy/dovecot/ of this checkout: the files operators install."""
    return Path(settings.BASE_DIR) / "deploy" / "dovecot"


def sql_config(database: Mapping[str, Any]) -> str:
    """The shipped dovecot-sql-<driver>.conf.ext with `connect` pointed at `database`.

    `database` is a Django DATABASES entry (ENGINE, NAME, USER, ...). PostgreSQL and SQLite
    are supported; DovecotError for anything else or for a SQLite file that does not exist
    (the sqlite driver would create an empty one).
    """
    engine = str(database.get("ENGINE", ""))
    if engine.endswith("postgresql"):
        driver, connect = "pgsql", pgsql_conninfo(database)
    elif engine.endswith("sqlite3"):
        driver, connect = "sqlite", _sqlite_connect(database)
    else:
        raise DovecotError(f"Dovecot's SQL drivers cannot read a {engine or '?'} database")
    template = (shipped_dir() / f"dovecot-sql-{driver}.conf.ext").read_text(encoding="utf-8")
    text, count = re.subn(r"(?m)^connect = .*$", lambda _m: f"connect = {connect}", template)
    if count != 1:
        raise DovecotError(f"dovecot-sql-{driver}.conf.ext: expected one 'connect =' line")
    return text


def pgsql_conninfo(database: Mapping[str, Any]) -> str:
    """A libpq key=value string for a Django PostgreSQL entry, every value quoted.

    Quoting also protects ``#`` in a password from Dovecot's comment stripping, which skips
    quoted text.
    """
    pairs: dict[str, str] = {}
    for key, django_key in (("host", "HOST"), ("port", "PORT"), ("dbname", "NAME")):
        if database.get(django_key):
            pairs[key] = str(database[django_key])
    if database.get("USER"):
        pairs["user"] = str(database["USER"])
    if database.get("PASSWORD"):
        pairs["password"] = str(database["PASSWORD"])
    options = database.get("OPTIONS") or {}
    pairs.update({key: str(value) for key, value in options.items() if key in _LIBPQ_OPTIONS})
    for value in pairs.values():
        if "\n" in value or "\r" in value:
            raise DovecotError("a database setting contains a line break")
    return " ".join(f"{key}={_libpq_quote(value)}" for key, value in pairs.items())


def _libpq_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _sqlite_connect(database: Mapping[str, Any]) -> str:
    name = str(database.get("NAME", ""))
    if not name or name == ":memory:" or name.startswith("file:"):
        raise DovecotError(f"Dovecot needs a SQLite file it can open, not {name!r}")
    path = Path(name).resolve()
    if not path.is_file():
        raise DovecotError(f"{path} does not exist yet: run `manage.py migrate` first")
    if any(char in str(path) for char in '"\\\n'):
        raise DovecotError(f"{path}: quotes, backslashes and line breaks are not supported")
    return f'"{path}"'


def render_config(
    *,
    state_dir: Path,
    port: int,
    sql_path: Path,
    run_as: _RunAs,
    doveadm_port: int | None = None,
    doveadm_key: str = "",
) -> str:
    """The private dovecot.conf: the shipped file, then the overrides (module docstring).

    With `doveadm_port`, doveadm's HTTP API listens on 127.0.0.1 there, keyed `doveadm_key`
    (the DOVEADM_API_URL / DOVEADM_API_KEY the portal uses to end sessions).
    """
    shipped = (shipped_dir() / "dovecot.conf").read_text(encoding="utf-8")
    if shipped.count(f"args = {SHIPPED_SQL_ARGS}") != 2:
        raise DovecotError(f"dovecot.conf: expected passdb and userdb args {SHIPPED_SQL_ARGS}")
    text = shipped.replace(f"args = {SHIPPED_SQL_ARGS}", f"args = {sql_path}")
    text, tls_files = re.subn(r"(?m)^(ssl_cert|ssl_key) = <.*\n", "", text)
    if tls_files != 2:
        raise DovecotError("dovecot.conf: expected one ssl_cert and one ssl_key line")
    overrides = [
        "",
        "##",
        "## Private instance (accounts/dovecot.py). Everything above is the shipped",
        "## deploy/dovecot/dovecot.conf; only paths, the listener, TLS and users change.",
        "##",
        "",
        f"base_dir = {state_dir / 'run'}",
        f"state_dir = {state_dir / 'lib'}",
        f"log_path = {state_dir / 'dovecot.log'}",
        f"listen = {LOOPBACK}",
        "# Loopback only: no TLS, and plaintext logins are allowed.",
        "ssl = no",
        "disable_plaintext_auth = no",
        "service imap-login {",
        "  inet_listener imap {",
        f"    address = {LOOPBACK}",
        f"    port = {port}",
        "  }",
        "  inet_listener imaps {",
        "    port = 0",
        "  }",
        "}",
        f"mail_home = {state_dir / 'vmail'}/%Ld/%Ln",
        *run_as.lines,
        "",
    ]
    if doveadm_port is not None:
        if not re.fullmatch(r"[A-Za-z0-9_-]{16,}", doveadm_key):
            raise DovecotError("the doveadm API key must be 16+ letters, digits, _ or -")
        overrides += [
            "# doveadm's HTTP API, for the portal to end sessions (DOVEADM_API_URL).",
            f"doveadm_api_key = {doveadm_key}",
            "service doveadm {",
            "  inet_listener http {",
            f"    address = {LOOPBACK}",
            f"    port = {doveadm_port}",
            "  }",
            "}",
            "",
        ]
    return text + "\n".join(overrides)


def _run_as(sqlite_file: Path | None) -> _RunAs:
    if os.geteuid() == 0:
        try:
            mail = pwd.getpwnam("dovecot")
        except KeyError:
            raise DovecotError("no 'dovecot' system user: is dovecot-core installed?") from None
        lines = [
            "# Root: mail as the package's dovecot user (Dovecot refuses mail as root).",
            f"mail_uid = {mail.pw_uid}",
            f"mail_gid = {mail.pw_gid}",
            f"first_valid_uid = {mail.pw_uid}",
            f"first_valid_gid = {mail.pw_gid}",
        ]
        if sqlite_file is not None:
            owner = sqlite_file.stat().st_uid
            lines += [
                "# SQLite in WAL mode: the reader runs as the database file's owner.",
                "service auth-worker {",
                f"  user = {_user_name(owner)}",
                "}",
            ]
        return _RunAs(tuple(lines), mail.pw_uid, mail.pw_gid)
    me = pwd.getpwuid(os.geteuid())
    group = _group_name(os.getegid())
    lines = [
        "# Not root: every process runs as this user, without chroots.",
        f"default_internal_user = {me.pw_name}",
        f"default_internal_group = {group}",
        f"default_login_user = {me.pw_name}",
        f"mail_uid = {me.pw_uid}",
        f"mail_gid = {os.getegid()}",
        f"first_valid_uid = {me.pw_uid}",
        f"first_valid_gid = {os.getegid()}",
    ]
    for service in _CHROOTED_SERVICES:
        lines += [f"service {service} {{", "  chroot =", "}"]
    return _RunAs(tuple(lines), me.pw_uid, os.getegid())


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        raise DovecotError(f"uid {uid} owns the database file but has no name") from None


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        raise DovecotError(f"gid {gid} has no name") from None


class PrivateDovecot:
    """A Dovecot on 127.0.0.1:<port> reading `database`, with all state in `state_dir`.

    `database` is a Django DATABASES entry (settings.DATABASES["default"], or a test
    connection's settings_dict). `state_dir` holds the config, sockets (run/), the log
    (dovecot.log) and the mailboxes (vmail/); it is created if missing. Several instances
    may run side by side on different ports and state directories.
    """

    def __init__(
        self,
        *,
        state_dir: Path,
        database: Mapping[str, Any],
        port: int = DEFAULT_PORT,
        doveadm_port: int | None = None,
    ) -> None:
        self.state_dir = Path(state_dir).resolve()
        self.database = dict(database)
        self.port = port
        self.doveadm_port = doveadm_port
        # Random per instance; the settings a portal needs are api_url and this.
        self.doveadm_key = secrets.token_urlsafe(24) if doveadm_port is not None else ""

    @property
    def api_url(self) -> str:
        """DOVEADM_API_URL of this instance ("" without a doveadm port)."""
        return f"http://{LOOPBACK}:{self.doveadm_port}" if self.doveadm_port else ""

    # Paths -----------------------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.state_dir / "dovecot.conf"

    @property
    def sql_path(self) -> Path:
        return self.state_dir / "dovecot-sql.conf.ext"

    @property
    def log_path(self) -> Path:
        return self.state_dir / "dovecot.log"

    @property
    def pid_path(self) -> Path:
        return self.state_dir / "run" / "master.pid"

    @property
    def info_path(self) -> Path:
        return self.state_dir / "instance.json"

    # Life cycle ------------------------------------------------------------------------

    def write_config(self) -> None:
        """Write dovecot.conf and the SQL file (0600: it may hold a database password)."""
        if not _SAFE_PATH.match(str(self.state_dir)):
            raise DovecotError(
                f"{self.state_dir}: use a state directory whose path has only letters, "
                "digits and . _ / + @ , = -"
            )
        if len(str(self.state_dir / "run")) > _MAX_BASE_DIR:
            raise DovecotError(f"{self.state_dir}: too long for UNIX socket paths")
        sql = sql_config(self.database)
        sqlite_file = None
        if str(self.database.get("ENGINE", "")).endswith("sqlite3"):
            sqlite_file = Path(str(self.database["NAME"])).resolve()
        run_as = _run_as(sqlite_file)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        vmail = self.state_dir / "vmail"
        vmail.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            # The mail user must reach vmail/ through the state directory.
            self.state_dir.chmod(0o711)
            os.chown(vmail, run_as.mail_uid, run_as.mail_gid)
            _check_searchable(self.state_dir, run_as.mail_uid, run_as.mail_gid)
        fd = os.open(self.sql_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(sql)
        self.config_path.write_text(
            render_config(
                state_dir=self.state_dir,
                port=self.port,
                sql_path=self.sql_path,
                run_as=run_as,
                doveadm_port=self.doveadm_port,
                doveadm_key=self.doveadm_key,
            ),
            encoding="utf-8",
        )

    def start(self, *, timeout: float = 20.0) -> int:
        """Start Dovecot and wait until IMAP answers `* OK` and the view can be read.

        Returns the master's pid. DovecotError if Dovecot is missing, already runs from this
        state directory, the port is taken, it exits or does not answer within `timeout`
        (the message carries the end of its log), or it cannot read dovecot_users.
        """
        missing = missing_binaries()
        if missing:
            raise DovecotError(f"not installed: {', '.join(missing)}")
        running = self.pid()
        if running is not None:
            raise DovecotError(f"already running from {self.state_dir} (pid {running})")
        if not _port_is_free(self.port):
            raise DovecotError(f"{LOOPBACK}:{self.port} is already in use")
        self.write_config()
        with contextlib.suppress(FileNotFoundError):
            self.pid_path.unlink()  # stale: its process is gone (checked above)
        # Dovecot checks its config and binds the listener, then daemonizes: the master
        # leads its own session and process group, whose pid is in run/master.pid.
        # Output to a file, not a pipe: the daemon keeps its copy of the descriptors open.
        try:
            with (self.state_dir / "dovecot.out").open("w", encoding="utf-8") as output:
                result = subprocess.run(  # noqa: S603 - fixed program, our own config
                    [_binary("dovecot"), "-c", str(self.config_path)],
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    timeout=timeout,
                    check=False,
                )
        except subprocess.TimeoutExpired:
            self.stop()
            raise DovecotError(f"dovecot did not start in {timeout:.0f} s") from None
        if result.returncode != 0:
            raise DovecotError(f"dovecot would not start:\n{self.log_tail()}")
        deadline = time.monotonic() + timeout
        while not _answers_imap(self.port):
            if self.pid_path.exists() and self.pid() is None:
                raise DovecotError(f"dovecot exited at start:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise DovecotError(f"no IMAP greeting within {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.05)
        pid = self.pid()
        if pid is None:
            raise DovecotError(f"dovecot answers but left no master.pid:\n{self.log_tail()}")
        self.info_path.write_text(json.dumps({"pid": pid, "port": self.port}), encoding="utf-8")
        self._check_database()
        return pid

    def stop(self, *, timeout: float = 15.0) -> bool:
        """Stop Dovecot and wait for all its processes; False if it was not running."""
        pid = self.pid()
        if pid is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _process_alive(pid) or _group_alive(pid):
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
                break
            time.sleep(0.05)
        return True

    def pid(self) -> int | None:
        """The master's pid if this instance runs, else None."""
        try:
            pid = int(self.pid_path.read_text(encoding="ascii").strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if _process_alive(pid) and _is_dovecot(pid) else None

    def recorded_port(self) -> int | None:
        """The port the running instance was started on (instance.json), if it runs."""
        if self.pid() is None:
            return None
        try:
            info = json.loads(self.info_path.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return None
        port = info.get("port")
        return port if isinstance(port, int) else None

    def _check_database(self) -> None:
        # A user lookup reaches the database without the failed-login delay: "unknown
        # user" proves the driver is installed, the connection works and the view exists.
        result = self.doveadm("user", "nobody@mailportal.invalid", check=False)
        if result.returncode != _USER_UNKNOWN:
            detail = (result.stdout + result.stderr).strip()
            self.stop()
            raise DovecotError(f"Dovecot cannot read dovecot_users ({detail}):\n{self.log_tail()}")

    # Questions -------------------------------------------------------------------------

    def doveadm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run `doveadm -c <our config> ARGS`; DovecotError on failure when `check`."""
        result = subprocess.run(  # noqa: S603 - fixed program, arguments from our callers
            [_binary("doveadm"), "-c", str(self.config_path), *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if check and result.returncode != 0:
            raise DovecotError(
                f"doveadm {args[0] if args else ''} exited {result.returncode}: "
                f"{(result.stderr or result.stdout).strip()}"
            )
        return result

    def auth_test(self, username: str, password: str) -> bool:
        """Whether Dovecot's passdb accepts this login (`doveadm auth test`).

        False for a refused login (wrong password, unknown, disabled or deleted account);
        DovecotError for a temporary failure (database unreachable), which is not a refusal.
        """
        result = self.doveadm("auth", "test", username, password, check=False)
        if result.returncode == 0:
            return True
        if result.returncode == _AUTH_REFUSED and "temp_fail" not in result.stdout:
            return False
        raise DovecotError(f"auth test failed temporarily: {result.stdout.strip()}")

    def verify_hash(self, hashed: str, password: str) -> bool:
        """Whether Dovecot's own password code accepts `password` for `hashed`
        (`doveadm pw -t`), e.g. ``{ARGON2ID}$argon2id$...``. Needs no running server."""
        result = self.doveadm("pw", "-t", hashed, "-p", password, check=False)
        return result.returncode == 0

    def sessions(self) -> list[Session]:
        """The connected sessions, one per connection (`doveadm who -1`)."""
        result = self.doveadm("-f", "tab", "who", "-1")
        sessions = []
        for line in result.stdout.splitlines()[1:]:
            username, protocol, pid, ip = line.split("\t")
            sessions.append(Session(username=username, protocol=protocol, pid=int(pid), ip=ip))
        return sessions

    def quota(self, username: str) -> list[QuotaResource]:
        """The quota Dovecot applies to `username` (`doveadm quota get`)."""
        result = self.doveadm("-f", "tab", "quota", "get", "-u", username)
        resources = []
        for line in result.stdout.splitlines()[1:]:
            root, kind, value, limit, _percent = line.split("\t")
            resources.append(
                QuotaResource(
                    root=root,
                    kind=kind,
                    value=int(value),
                    limit=None if limit == "-" else int(limit),
                )
            )
        return resources

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of Dovecot's start-up output and log, for error messages."""
        text: list[str] = []
        for path in (self.state_dir / "dovecot.out", self.log_path):
            with contextlib.suppress(FileNotFoundError):
                text += path.read_text(encoding="utf-8", errors="replace").splitlines()
        return "\n".join(text[-lines:])


def _binary(name: str) -> str:
    path = find_binary(name)
    if path is None:
        raise DovecotError(f"{name} is not installed")
    return path


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def _answers_imap(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=2) as conn:
            conn.settimeout(2)
            greeting = conn.recv(512)
    except OSError:
        return False
    return greeting.startswith(b"* OK")


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, process group) from /proc, or None if there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[2])


def _process_alive(pid: int) -> bool:
    # A zombie counts as gone: where init does not reap (containers), an exited master
    # stays a zombie forever.
    if Path("/proc").is_dir():
        stat = _proc_stat(pid)
        return stat is not None and stat[0] not in {"Z", "X"}
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _group_alive(pgid: int) -> bool:
    """Whether a live process remains in the process group (the master's children)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return False
    for entry in proc.iterdir():
        if entry.name.isdigit():
            stat = _proc_stat(int(entry.name))
            if stat is not None and stat[1] == pgid and stat[0] not in {"Z", "X"}:
                return True
    return False


def _is_dovecot(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return not Path("/proc").is_dir()  # no /proc: trust the pid file
    return b"dovecot" in cmdline


def _check_searchable(path: Path, uid: int, gid: int) -> None:
    """DovecotError unless user uid/gid may pass through every directory down to `path`."""
    for directory in [*reversed(path.parents), path]:
        info = directory.stat()
        if info.st_uid == uid:
            bit = 0o100
        elif info.st_gid == gid:
            bit = 0o010
        else:
            bit = 0o001
        if not info.st_mode & bit:
            raise DovecotError(
                f"{directory} is not searchable by uid {uid}, which stores the mail: "
                "choose a state directory elsewhere (e.g. under /tmp)"
            )
