"""The only settings module: everything is configured by the environment (ARCHITECTURE.md)."""

from __future__ import annotations

import ipaddress
import os
import secrets
from datetime import timedelta
from pathlib import Path
from urllib.parse import unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.retry import Retry

# ---------------------------------------------------------------------------------------------
# Environment helpers: strict, so that a typo in production fails at start instead of
# silently meaning something else.
# ---------------------------------------------------------------------------------------------

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"

_TRUE = {"1", "true", "on"}
_FALSE = {"0", "false", "off", ""}


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default).strip()


def env_bool(name: str, default: bool = False) -> bool:
    """1/true/on or 0/false/off (any case); anything else ("yes", "enabled") is an error."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r}: use 1/true/on or 0/false/off")


def env_int(name: str, default: int) -> int:
    raw = env_str(name)
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r}: expected a whole number") from None


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in env_str(name, default).split(",") if item.strip()]


def env_networks(name: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    networks = []
    for item in env_list(name):
        try:
            networks.append(ipaddress.ip_network(item, strict=True))
        except ValueError as exc:
            raise ImproperlyConfigured(f"{name}: {item!r} is not a network ({exc})") from exc
    return networks


def env_secret(name: str) -> str:
    """A secret from NAME, or from the file named by NAME_FILE (for container secrets)."""
    value = env_str(name)
    file_name = env_str(f"{name}_FILE")
    if value and file_name:
        raise ImproperlyConfigured(f"set {name} or {name}_FILE, not both")
    if file_name:
        try:
            return Path(file_name).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ImproperlyConfigured(f"{name}_FILE: cannot read {file_name}: {exc}") from exc
    return value


def env_url(name: str, default: str, schemes: set[str]) -> str:
    value = env_str(name, default).rstrip("/")
    parts = urlsplit(value)
    if parts.scheme not in schemes or not parts.netloc:
        raise ImproperlyConfigured(f"{name}={value!r}: expected a {'/'.join(sorted(schemes))} URL")
    return value


def generated_secret_key(path: Path) -> str:
    """Create a random key once and keep it, so sessions survive restarts of `make run`."""
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(50)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(key)
    return key


def database_from_url(url: str) -> dict[str, object]:
    """`postgres://user:pass@host:port/db?sslmode=...` or `sqlite:////absolute/path`."""
    parts = urlsplit(url)
    if parts.scheme in {"postgres", "postgresql"}:
        name = unquote(parts.path.lstrip("/"))
        if not name:
            raise ImproperlyConfigured("DATABASE_URL: the PostgreSQL URL names no database")
        options = dict(pair.split("=", 1) for pair in parts.query.split("&") if "=" in pair)
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": name,
            "USER": unquote(parts.username or ""),
            "PASSWORD": unquote(parts.password or ""),
            "HOST": parts.hostname or "",
            "PORT": str(parts.port or ""),
            # Pooled connections would outlive gunicorn's fork; keep them per request but
            # reuse them for a minute to spare the connection set-up.
            "CONN_MAX_AGE": 60,
            "CONN_HEALTH_CHECKS": True,
            "OPTIONS": {"connect_timeout": 5, **options},
        }
    if parts.scheme == "sqlite":
        # sqlite:////abs/path has the path "//abs/path"; sqlite:///rel is relative to BASE_DIR.
        path = unquote(url[len("sqlite://") :])
        if not path or path == "/":
            raise ImproperlyConfigured("DATABASE_URL: the SQLite URL names no file")
        name = path[1:] if path.startswith("//") else str(BASE_DIR / path.lstrip("/"))
        return sqlite_database(Path(name))
    raise ImproperlyConfigured(f"DATABASE_URL: unsupported scheme {parts.scheme!r}")


def sqlite_database(path: Path) -> dict[str, object]:
    path.parent.mkdir(parents=True, exist_ok=True)
    return {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(path),
        "OPTIONS": {
            # Concurrent writers must queue, not fail: WAL lets readers run beside a writer,
            # IMMEDIATE takes the write lock at BEGIN (so a transaction never fails half-way
            # on lock upgrade), and the busy timeout makes the others wait for it.
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        },
        "TEST": {"NAME": str(path.with_name(f"test_{path.name}"))},
    }


# ---------------------------------------------------------------------------------------------
# Core Django
# ---------------------------------------------------------------------------------------------

DEBUG = env_bool("PORTAL_DEBUG", False)
SECRET_KEY = env_secret("SECRET_KEY") or generated_secret_key(VAR_DIR / "secret_key")

PORTAL_BASE_URL = env_url("PORTAL_BASE_URL", "http://127.0.0.1:8000", {"http", "https"})
PORTAL_HTTPS = PORTAL_BASE_URL.startswith("https://")
PORTAL_ALLOWED_HOSTS = env_list("PORTAL_ALLOWED_HOSTS", "127.0.0.1,localhost")
PORTAL_TRUSTED_PROXIES = env_networks("PORTAL_TRUSTED_PROXIES")
PORTAL_EGRESS_ALLOW = env_networks("PORTAL_EGRESS_ALLOW")
# Client networks that may reach /admin/ (its login page included); unset: any. Production
# names the administrators' networks (RELIABILITY.md check 28; docs/deploy.md).
PORTAL_ADMIN_NETWORKS = env_networks("PORTAL_ADMIN_NETWORKS")

# Which Host headers are accepted depends on the database (autoconfig.<domain> of every
# provider domain), so Django's static check is opened here and the real check is made by
# providers.middleware.HostCheckMiddleware, the first middleware: PORTAL_ALLOWED_HOSTS for
# everything, provider domains for the autoconfig paths only.
ALLOWED_HOSTS = ["*"]

ROOT_URLCONF = "portal.urls"
WSGI_APPLICATION = "portal.wsgi.application"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LANGUAGE_CODE = "en"
LANGUAGES = [("en", "English"), ("de", "Deutsch")]
LOCALE_PATHS = [BASE_DIR / "locale"]
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = VAR_DIR / "static"
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # whitenoise warns about a missing folder
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# Without collectstatic (tests, a developer's runserver) serve from the app folders directly.
WHITENOISE_USE_FINDERS = True

# Administrators' passwords (Django users). Mailbox passwords use accounts.passwords.
PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.Argon2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

# ---------------------------------------------------------------------------------------------
# Apps and middleware
# ---------------------------------------------------------------------------------------------

INSTALLED_APPS = [
    # django.contrib.admin with the portal's site: login limited, actions audited.
    "portal.apps.PortalAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "django_ratelimit",
    "portal",
    "providers",
    "accounts",
    "pushproxy",
]

MIDDLEWARE = [
    "providers.middleware.HostCheckMiddleware",
    "portal.proxies.TrustedProxyMiddleware",
    # Security events know the client address (portal/audit.py); /admin/ only from
    # PORTAL_ADMIN_NETWORKS (portal/adminsite.py).
    "portal.audit.RequestContextMiddleware",
    "portal.adminsite.AdminNetworkMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "portal.headers.ContentSecurityPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# The push proxy's clients and our own tests hit the same URLs with and without the slash.
APPEND_SLASH = True

# ---------------------------------------------------------------------------------------------
# Database
# ---------------------------------------------------------------------------------------------

_database_url = env_str("DATABASE_URL")
DATABASES = {
    "default": (
        database_from_url(_database_url)
        if _database_url
        else sqlite_database(VAR_DIR / "mailportal.sqlite3")
    )
}

# ---------------------------------------------------------------------------------------------
# Cache and Celery. REDIS_URL decides, once, here: without it Celery runs tasks eagerly in
# the calling process and the cache is local memory (one process, `make run`).
# ---------------------------------------------------------------------------------------------

HAS_REDIS = bool(env_str("REDIS_URL"))
REDIS_URL = env_url("REDIS_URL", "", {"redis", "rediss"}) if HAS_REDIS else ""

# A Redis that is down must cost its callers milliseconds, not seconds: rate limits then fail
# closed at once (503) and the suggestion fan-out reports its remote providers as `error`
# well before its deadline (RELIABILITY.md check 7). Each client below says so explicitly
# rather than trusting defaults, which differ between the libraries and their versions
# (redis-py 8 gives a client that builds its own pool 3 retries with backoff from 1 s).
# A connection lost during a command is worth one immediate retry; a timeout is not
# retried (it already cost socket_timeout). A pooled connection that Redis closed while it
# sat idle (a restart) is replaced by redis-py before use, without a retry.
REDIS_CONNECT_TIMEOUT = 2  # seconds; Redis answers a connect in well under a millisecond
REDIS_CACHE_OPTIONS = {
    "socket_connect_timeout": REDIS_CONNECT_TIMEOUT,
    "socket_timeout": 2,
    "retry": Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
}
# kombu's and Celery's own retry loops (retry_over_time), for publishing and for the
# result backend's pub/sub: one immediate retry, then the caller hears of the failure.
# Their defaults, measured here with Redis refusing connections: kombu's
# Connection.default_channel keeps trying for broker_connection_timeout (Celery's 4 s,
# sleeping 2 s between tries: ~6 s per publish without a retry policy; bounded below by
# CELERY_BROKER_CONNECTION_TIMEOUT too), the result backend's pub/sub 20 times a second
# apart (~19 s per send) before it gives up.
REDIS_QUICK_RETRY = {
    "max_retries": 1,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.2,
}

if HAS_REDIS:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "portal",
            "OPTIONS": REDIS_CACHE_OPTIONS,
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

CELERY_BROKER_URL = REDIS_URL or "memory://"
CELERY_RESULT_BACKEND = REDIS_URL or None
CELERY_TASK_ALWAYS_EAGER = not HAS_REDIS
CELERY_TASK_EAGER_PROPAGATES = not HAS_REDIS
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SOFT_TIME_LIMIT = 60
CELERY_TASK_TIME_LIMIT = 90
CELERY_RESULT_EXPIRES = 3600
# With late acknowledgement, Redis hands a task whose worker died (kill -9, lost machine) to
# another worker once this many seconds have passed since it was taken. Longer than any task
# runs (else a slow task runs twice; ours are idempotent, but it costs); tests shorten it.
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", 3600),
    # Publishers connect with one quick retry (REDIS_QUICK_RETRY); a publish that wants more
    # says so with its retry policy. Workers are not affected: their consumer reconnects
    # under broker_connection_max_retries, which it passes itself.
    **REDIS_QUICK_RETRY,
    "socket_connect_timeout": REDIS_CONNECT_TIMEOUT,
}
# The result backend (the fan-out's answers): the same, for its pub/sub reconnects and writes.
CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS = {"retry_policy": REDIS_QUICK_RETRY}
CELERY_REDIS_SOCKET_CONNECT_TIMEOUT = REDIS_CONNECT_TIMEOUT
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# How long a publish waits for a broker that does not answer: Celery's default (4 s, then
# kombu's retries) held a web request about 6 s when Redis was down (measured here), longer
# than the fan-out's deadline and the push API's wait; Redis on the LAN connects in
# milliseconds.
CELERY_BROKER_CONNECTION_TIMEOUT = 1.0
CELERY_BEAT_SCHEDULE: dict[str, dict[str, object]] = {
    # Idempotency records older than 24 h and abandoned email verifications (hourly).
    "purge-registrations": {"task": "accounts.purge_registrations", "schedule": 3600.0},
    # Settle interrupted account creations/deletions, report accounts and mailboxes that
    # disagree, align enabled/disabled (accounts/services/reconcile.py; every 5 minutes).
    "reconcile-mailboxes": {"task": "accounts.reconcile_mailboxes", "schedule": 300.0},
    # Self-service sessions past their idle or maximum age (they open nothing already; hourly).
    "purge-sessions": {"task": "accounts.purge_sessions", "schedule": 3600.0},
    # Temporary accounts of onboarding tokens: disable when their lifetime ends, delete
    # TEMPORARY_ACCOUNT_GRACE later (accounts/services/lifetime.py; every 5 minutes).
    "end-expired-accounts": {"task": "accounts.end_expired_accounts", "schedule": 300.0},
    # Onboarding sheets hold passwords: gone an hour after they were asked for. The sweep
    # also restarts a sheet whose worker was lost (no progress for 2 minutes) and fails one
    # that cannot be finished (accounts/services/sheets.py; every minute).
    "sweep-sheets": {"task": "accounts.sweep_sheets", "schedule": 60.0},
}

# ---------------------------------------------------------------------------------------------
# DRF and the OpenAPI schema
# ---------------------------------------------------------------------------------------------

REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "portal.api.exception_handler",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_AUTHENTICATION_CLASSES": [],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.AllowAny"],
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "mailportal API",
    "DESCRIPTION": "Provider list, suggestions, registration, account self-service, push proxy.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
}

# ---------------------------------------------------------------------------------------------
# Security headers. HTTPS-only settings follow the scheme of PORTAL_BASE_URL, so an https
# deployment passes `check --deploy` and a loopback http origin still works.
# ---------------------------------------------------------------------------------------------

SECURE_CONTENT_TYPE_NOSNIFF = True
# The Content-Security-Policy of every answer that sets none itself (portal/headers.py).
# Error reports (mails to ADMINS, the DEBUG page) show no cookie value (portal/redact.py);
# views and services that take a password mark it with sensitive_variables.
DEFAULT_EXCEPTION_REPORTER_FILTER = "portal.redact.ExceptionReporterFilter"
PORTAL_CSP = "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
CSRF_TRUSTED_ORIGINS = [PORTAL_BASE_URL]
# Pages send the CSRF value as a form field, so no script needs to read the cookie.
CSRF_COOKIE_HTTPONLY = True
# A friendly, translated page (with a way back into the flow) instead of Django's bare 403.
CSRF_FAILURE_VIEW = "portal.views.csrf_failure"
if PORTAL_HTTPS:
    SECURE_SSL_REDIRECT = True
    # Behind a TLS proxy the scheme arrives in X-Forwarded-Proto. That header is only
    # believed from PORTAL_TRUSTED_PROXIES: portal.proxies.TrustedProxyMiddleware removes it
    # from every other peer before SecurityMiddleware reads it.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    # __Host-: the browser keeps it only if Secure, Path=/ and without Domain (RELIABILITY.md
    # check 14), so no sibling host can plant one. Over plain http it would be dropped. The
    # administrators' session cookie too.
    SESSION_COOKIE_NAME = "__Host-sessionid"
    CSRF_COOKIE_NAME = "__Host-csrftoken"
    SECURE_HSTS_SECONDS = 31_536_000
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    # The preload directive only states consent; nothing is submitted to any list.
    SECURE_HSTS_PRELOAD = True
    # Health checks come from the load balancer over plain http.
    SECURE_REDIRECT_EXEMPT = [r"^healthz$"]

# ---------------------------------------------------------------------------------------------
# Rate limits (django-ratelimit). Policies are named in portal/ratelimit.py.
# ---------------------------------------------------------------------------------------------

RATELIMIT_USE_CACHE = "default"
RATELIMIT_VIEW = "portal.ratelimit.rate_limited"
# Keys are computed by portal.proxies.client_ip (peer address, X-Forwarded-For only from a
# trusted proxy, IPv6 grouped by /64), never by django-ratelimit's header options.
RATELIMIT_IP_META_KEY = "portal.proxies.client_ip_for_ratelimit"
# django-ratelimit's checks: W001 says any backend but memcached/django-redis is "not officially
# supported" (Django's own RedisCache increments atomically with INCR, so it is fine here);
# E003 says LocMemCache is not shared, which is right but harmless without REDIS_URL: the
# deployment is then one process (ARCHITECTURE.md), so its one cache is the shared cache.
SILENCED_SYSTEM_CHECKS = ["django_ratelimit.W001"]
if not HAS_REDIS:
    SILENCED_SYSTEM_CHECKS.append("django_ratelimit.E003")
# In-band registration (POST /api/v1/register) per client address; verification codes tried
# (POST /api/v1/register/verify) per client address. Rates as django-ratelimit reads them.
REGISTRATION_RATE = "10/h"
REGISTRATION_VERIFY_RATE = "30/h"
# Largest registration request body read, in bytes; a real one is a few hundred.
REGISTRATION_MAX_BODY_BYTES = 16_384
# Self-service login (accounts/services/sessions.py, portal.ratelimit.LOGIN_*): failed
# logins counted per client address and per account name, and LoginPrep calls per address.
LOGIN_FAILURES_PER_IP_RATE = "10/m"
LOGIN_FAILURES_PER_ACCOUNT_RATE = "100/h"
LOGIN_PREP_RATE = "60/m"
# Django admin's login (portal/adminsite.py): failed logins per client address and per
# typed user name; past either the login answers 429 without checking the password.
ADMIN_LOGIN_FAILURES_PER_IP_RATE = "10/m"
ADMIN_LOGIN_FAILURES_PER_ACCOUNT_RATE = "50/h"
# DCACCOUNT redemptions (POST /dcaccount/<token>, /new_email) per client address.
DCACCOUNT_RATE = "60/h"
# Hosted registration pages (/register/<slug>/): attempts (each POST that checks a token,
# an address or a password) per client address.
REGISTRATION_PAGE_RATE = "30/h"
# How long one page of the registration flow stays valid (seconds): its signed state expires.
REGISTRATION_FLOW_MAX_AGE = 3600

# ---------------------------------------------------------------------------------------------
# Mail-domain settings
# ---------------------------------------------------------------------------------------------

MAILBOX_BACKEND = env_str("MAILBOX_BACKEND", "sql")
if MAILBOX_BACKEND not in {"sql", "command"}:
    raise ImproperlyConfigured(f"MAILBOX_BACKEND={MAILBOX_BACKEND!r}: use 'sql' or 'command'")
# The `command` backend's program (split like a shell would; no shell runs) and how long it
# may take before the account change is rolled back.
MAILBOX_COMMAND = env_str("MAILBOX_COMMAND")
MAILBOX_COMMAND_TIMEOUT = env_int("MAILBOX_COMMAND_TIMEOUT", 30)
if MAILBOX_BACKEND == "command" and not MAILBOX_COMMAND:
    raise ImproperlyConfigured("MAILBOX_BACKEND=command needs MAILBOX_COMMAND")
# A creation or deletion still unfinished after this many seconds was interrupted (a crash,
# a lost connection): the reconciler then finishes it (accounts/services/reconcile.py). It
# must exceed the longest a request can take: the command's time limit plus hashing.
MAILBOX_RECONCILE_GRACE = env_int("MAILBOX_RECONCILE_GRACE", 600)
if MAILBOX_RECONCILE_GRACE <= 2 * MAILBOX_COMMAND_TIMEOUT:
    raise ImproperlyConfigured(
        "MAILBOX_RECONCILE_GRACE must exceed twice MAILBOX_COMMAND_TIMEOUT (seconds)"
    )
# Dovecot's doveadm HTTP API (deploy/dovecot/README.md). With the `sql` backend the portal
# uses it to end the open IMAP sessions of an account that is disabled, deleted or given a
# new password, which a changed row alone does not do. Unset: sessions end when they
# log in again.
DOVEADM_API_URL = (
    env_url("DOVEADM_API_URL", "", {"http", "https"}) if env_str("DOVEADM_API_URL") else ""
)
DOVEADM_API_KEY = env_secret("DOVEADM_API_KEY")
if bool(DOVEADM_API_URL) != bool(DOVEADM_API_KEY):
    raise ImproperlyConfigured("set both DOVEADM_API_URL and DOVEADM_API_KEY, or neither")
# Apple configuration profiles are signed when both files are given (PEM); see
# docs/autoconfig.md. An addition to ARCHITECTURE.md's table, recorded there.
PORTAL_MOBILECONFIG_CERT = env_str("PORTAL_MOBILECONFIG_CERT")
PORTAL_MOBILECONFIG_KEY = env_str("PORTAL_MOBILECONFIG_KEY")
if bool(PORTAL_MOBILECONFIG_CERT) != bool(PORTAL_MOBILECONFIG_KEY):
    raise ImproperlyConfigured("set both PORTAL_MOBILECONFIG_CERT and PORTAL_MOBILECONFIG_KEY")

# Mail the portal sends itself (registration verification codes), over SMTP. The default
# is the MTA on this host, which a mail provider's machine has.
EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER")
EMAIL_HOST_PASSWORD = env_secret("EMAIL_HOST_PASSWORD")
EMAIL_SECURITY = env_str("EMAIL_SECURITY", "none")
if EMAIL_SECURITY not in {"none", "starttls", "tls"}:
    raise ImproperlyConfigured(f"EMAIL_SECURITY={EMAIL_SECURITY!r}: use none, starttls or tls")
EMAIL_USE_TLS = EMAIL_SECURITY == "starttls"
EMAIL_USE_SSL = EMAIL_SECURITY == "tls"
EMAIL_TIMEOUT = 10
DEFAULT_FROM_EMAIL = env_str("PORTAL_MAIL_FROM", "mailportal@localhost")

# ---------------------------------------------------------------------------------------------
# Account self-service sessions (specs/account-api.md; docs/self-service.md)
# ---------------------------------------------------------------------------------------------

# A session ends after this many seconds without use, and at the latest this long after
# the login, however busy (ASVS 7.3.1, 7.3.2).
ACCOUNT_SESSION_IDLE_SECONDS = env_int("ACCOUNT_SESSION_IDLE_SECONDS", 3600)
ACCOUNT_SESSION_MAX_SECONDS = env_int("ACCOUNT_SESSION_MAX_SECONDS", 86_400)
if not 0 < ACCOUNT_SESSION_IDLE_SECONDS <= ACCOUNT_SESSION_MAX_SECONDS:
    raise ImproperlyConfigured(
        "ACCOUNT_SESSION_IDLE_SECONDS must be positive and at most ACCOUNT_SESSION_MAX_SECONDS"
    )
# A LoginPrep token is good for one Login within this many seconds.
LOGIN_TOKEN_SECONDS = 600

# Temporary accounts (onboarding tokens with an account lifetime) are disabled when the
# lifetime ends and deleted this much later, so an administrator can still rescue one.
TEMPORARY_ACCOUNT_GRACE = timedelta(days=7)
# A batch onboarding sheet (it holds passwords) is deleted at its first download or after
# this long, whichever comes first.
ONBOARDING_SHEET_LIFETIME = timedelta(hours=1)

# How long clients may cache an autoconfig document (it also carries an ETag).
AUTOCONFIG_MAX_AGE = 3600
# Largest Autodiscover request body we read; real ones are a few hundred bytes.
AUTODISCOVER_MAX_BYTES = 16_384

# ---------------------------------------------------------------------------------------------
# Suggestions (providers/services/fanout.py, suggest.py; docs/suggestions.md)
# ---------------------------------------------------------------------------------------------

# Per client address, GET /api/v1/suggestions (django-ratelimit rate). The default of the
# admin-editable "suggestion settings" (providers.SuggestionSettings): admin wins when set.
SUGGESTION_RATE = "30/m"
# How long a remote provider may take (seconds); each provider may set its own in admin.
SUGGESTION_TIMEOUT = 3.0
# Added to the slowest provider's timeout before the answer goes out without the stragglers:
# queueing in the broker and the worker's hand-back take a few milliseconds, not this long.
SUGGESTION_GRACE = 0.5
# Identical queries within this many seconds are answered from the shared cache.
SUGGESTION_CACHE_SECONDS = 60
# A remote provider's answer larger than this (bytes) is that provider's error; a real one
# is a few hundred bytes.
SUGGESTION_MAX_RESPONSE_BYTES = 65_536
# How many addresses a hosted provider suggests, unless it sets its own number in admin.
SUGGESTION_COUNT = 5
# Without Redis the fan-out asks remote providers from a thread pool of this size.
SUGGESTION_THREADS = 32
# Outbound calls to providers' suggestion APIs say who they are, and may leave from one
# chosen local address (so providers can allow-list it on a host with several).
SUGGESTION_USER_AGENT = (
    env_str("PORTAL_SUGGESTION_USER_AGENT") or f"mailportal-suggestions/1 (+{PORTAL_BASE_URL})"
)
SUGGESTION_SOURCE_ADDRESS = env_str("PORTAL_SUGGESTION_SOURCE_ADDRESS")
if SUGGESTION_SOURCE_ADDRESS:
    try:
        ipaddress.ip_address(SUGGESTION_SOURCE_ADDRESS)
    except ValueError:
        raise ImproperlyConfigured(
            f"PORTAL_SUGGESTION_SOURCE_ADDRESS={SUGGESTION_SOURCE_ADDRESS!r}: not an IP address"
        ) from None
# Hourly suggestion counters older than this many days are deleted (daily job).
SUGGESTION_STATS_DAYS = 30
# Fan-out tasks have a queue of their own, so that a suggestion never waits behind slower
# work; workers that serve it: `celery -A portal worker -Q suggest -P threads` (Procfile).
CELERY_TASK_ROUTES = {"providers.query_provider": {"queue": "suggest"}}
CELERY_BEAT_SCHEDULE["purge-suggestion-stats"] = {
    "task": "providers.purge_suggestion_stats",
    "schedule": 86400.0,
}

# ---------------------------------------------------------------------------------------------
# Outbound calls and the push proxy (docs/push.md, specs/push-proxy.md)
# ---------------------------------------------------------------------------------------------

# How portal.netguard resolves names: a dotted path to a getaddrinfo-compatible function.
# Only tests change it (a stub resolver that answers differently on each call, check 19).
NETGUARD_RESOLVER = "socket.getaddrinfo"

# Plaintext IMAP (`security: none`) and http:// push endpoints; tests and private deployments.
PUSHPROXY_ALLOW_PLAINTEXT = env_bool("PUSHPROXY_ALLOW_PLAINTEXT", False)
PUSHPROXY_SEAL_KEY = env_secret("PUSHPROXY_SEAL_KEY")  # empty: derived from SECRET_KEY
# Mailboxes without IDLE are polled with NOOP this often (the source document's "new mail
# within 2 minutes" holds with the default).
PUSHPROXY_POLL_SECONDS = env_int("PUSHPROXY_POLL_SECONDS", 60)
# Subscriptions (distinct clientIds) per IMAP account; many providers cap IMAP connections.
PUSHPROXY_MAX_PER_ACCOUNT = env_int("PUSHPROXY_MAX_PER_ACCOUNT", 5)
# Privacy mode: the admin shows no IMAP user names; the database keeps a keyed hash only.
PUSHPROXY_PRIVACY = env_bool("PUSHPROXY_PRIVACY", False)
# RFC 8292 VAPID signing key (PEM or base64url raw P-256 scalar, `manage.py
# generate_vapid_keys`), or PUSHPROXY_VAPID_PRIVATE_KEY_FILE. Unset: one is generated into
# var/vapid_private_key.pem (fine for one machine; set it when several send pushes).
PUSHPROXY_VAPID_PRIVATE_KEY = env_secret("PUSHPROXY_VAPID_PRIVATE_KEY")
PUSHPROXY_VAPID_SUBJECT = env_str(
    "PUSHPROXY_VAPID_SUBJECT",
    PORTAL_BASE_URL if PORTAL_HTTPS else "mailto:postmaster@localhost",
)
if not PUSHPROXY_VAPID_SUBJECT.startswith(("mailto:", "https://")):
    raise ImproperlyConfigured("PUSHPROXY_VAPID_SUBJECT: use a mailto: or https:// URI")
if PUSHPROXY_POLL_SECONDS < 1 or PUSHPROXY_MAX_PER_ACCOUNT < 1:
    raise ImproperlyConfigured("PUSHPROXY_POLL_SECONDS and PUSHPROXY_MAX_PER_ACCOUNT must be >= 1")

# Fixed tuning (not environment): how long POST waits for the login before answering 202;
# RFC 2177 lets servers drop idlers after 29 minutes, so IDLE is re-issued every 25; the
# longest wait for a tagged answer (DONE, NOOP, LOGOUT) and for connect + login; the quiet
# gap that ends a burst of EXISTS (the burst is pushed once, at most 1 s after it began).
PUSHPROXY_LOGIN_WAIT_SECONDS = 8.0
PUSHPROXY_IDLE_SECONDS = 25 * 60
PUSHPROXY_COMMAND_TIMEOUT = 30.0
PUSHPROXY_LOGIN_TIMEOUT = 15.0
PUSHPROXY_COALESCE_SECONDS = 0.05
# A subscription still pending this long after its request will not log in any more (the
# sealed hand-off lives 30 s, a login step at most PUSHPROXY_LOGIN_TIMEOUT): it is failed
# with push_unavailable and its app told (services/subscriptions.expire_pending).
PUSHPROXY_PENDING_SECONDS = 60
# The monitor fleet (docs/push.md "Fleet", docs/scaling.md): 16,384 shards leased in Redis
# for PUSHPROXY_LEASE_SECONDS and renewed (with the database heartbeat) every
# PUSHPROXY_HEARTBEAT_SECONDS; a monitor whose leases lapsed is reaped every
# PUSHPROXY_REAP_SECONDS (its shards go to the others, its subscriptions get a reconnect
# push); rebalancing moves at most PUSHPROXY_REBALANCE_STEP shards per monitor per renewal.
PUSHPROXY_HEARTBEAT_SECONDS = env_int("PUSHPROXY_HEARTBEAT_SECONDS", 10)
PUSHPROXY_LEASE_SECONDS = env_int("PUSHPROXY_LEASE_SECONDS", 30)
PUSHPROXY_REAP_SECONDS = env_int("PUSHPROXY_REAP_SECONDS", 12)
PUSHPROXY_REBALANCE_STEP = env_int("PUSHPROXY_REBALANCE_STEP", 256)
# A monitor whose database heartbeat is older than this counts as dead (the reaper's check
# when Redis lost its leases, e.g. after a Redis restart).
PUSHPROXY_MONITOR_STALE_SECONDS = max(35, 3 * PUSHPROXY_HEARTBEAT_SECONDS + 5)
# Where the fleet keeps its keys in Redis (tests give each fleet its own).
PUSHPROXY_FLEET_PREFIX = env_str("PUSHPROXY_FLEET_PREFIX", "pushproxy:")
# Local addresses IMAP sessions leave from, taken in turn (empty: the system's choice). One
# address holds about 28,000 connections to one server address and port (docs/scaling.md).
PUSHPROXY_SOURCE_ADDRESSES = env_list("PUSHPROXY_SOURCE_ADDRESSES")
# SIGTERM: a monitor logs its sessions out and exits within this many seconds.
PUSHPROXY_SHUTDOWN_SECONDS = env_int("PUSHPROXY_SHUTDOWN_SECONDS", 20)
if not 1 <= PUSHPROXY_HEARTBEAT_SECONDS < PUSHPROXY_LEASE_SECONDS:
    raise ImproperlyConfigured(
        "PUSHPROXY_HEARTBEAT_SECONDS must be at least 1 and below PUSHPROXY_LEASE_SECONDS"
    )
if PUSHPROXY_REAP_SECONDS < 1 or PUSHPROXY_REBALANCE_STEP < 1 or PUSHPROXY_SHUTDOWN_SECONDS < 1:
    raise ImproperlyConfigured(
        "PUSHPROXY_REAP_SECONDS, PUSHPROXY_REBALANCE_STEP, PUSHPROXY_SHUTDOWN_SECONDS must be >= 1"
    )
for _source in PUSHPROXY_SOURCE_ADDRESSES:
    try:
        ipaddress.ip_address(_source)
    except ValueError:
        raise ImproperlyConfigured(
            f"PUSHPROXY_SOURCE_ADDRESSES: {_source!r} is not an IP address"
        ) from None
# Per IMAP host (pushproxy.hostlimits): fleet-wide login token bucket (rate, burst; a login
# that would wait longer than PUSHPROXY_HOST_LOGIN_WAIT seconds fails `imap_host_busy`),
# reconnect pushes after a lost monitor paced per host, and the non-IDLE (NOOP-polled)
# sessions one process keeps per host (`poll_cap_reached` past it).
PUSHPROXY_HOST_LOGINS_PER_SECOND = env_int("PUSHPROXY_HOST_LOGINS_PER_SECOND", 20)
PUSHPROXY_HOST_LOGIN_BURST = env_int("PUSHPROXY_HOST_LOGIN_BURST", 40)
PUSHPROXY_HOST_LOGIN_WAIT = env_int("PUSHPROXY_HOST_LOGIN_WAIT", 5)
# Keep the reconnect pace at or below the login pace, or apps come back faster than they may
# log in (docs/scaling.md).
PUSHPROXY_RECONNECTS_PER_HOST_PER_SECOND = env_int("PUSHPROXY_RECONNECTS_PER_HOST_PER_SECOND", 20)
PUSHPROXY_MAX_POLL_PER_HOST = env_int("PUSHPROXY_MAX_POLL_PER_HOST", 500)
if (
    min(
        PUSHPROXY_HOST_LOGINS_PER_SECOND,
        PUSHPROXY_HOST_LOGIN_BURST,
        PUSHPROXY_RECONNECTS_PER_HOST_PER_SECOND,
        PUSHPROXY_MAX_POLL_PER_HOST,
    )
    < 1
    or PUSHPROXY_HOST_LOGIN_WAIT < 0
):
    raise ImproperlyConfigured(
        "PUSHPROXY_HOST_LOGINS_PER_SECOND, _HOST_LOGIN_BURST, _RECONNECTS_PER_HOST_PER_SECOND"
        " and _MAX_POLL_PER_HOST must be >= 1, PUSHPROXY_HOST_LOGIN_WAIT >= 0"
    )
# Sessions one process serves at most: greenlets in `run_push_monitor`, threads in the
# embedded manager (no Redis), where each session is an OS thread.
PUSHPROXY_MAX_SESSIONS = env_int("PUSHPROXY_MAX_SESSIONS", 10_000 if HAS_REDIS else 200)
# Push delivery: per-attempt connect/read time, the whole attempt, the largest answer read.
PUSH_CONNECT_TIMEOUT = 5.0
PUSH_READ_TIMEOUT = 10.0
PUSH_TOTAL_TIMEOUT = 15.0
PUSH_MAX_RESPONSE_BYTES = 65_536
# Web Push message lifetime at the push service (RFC 8030 TTL header), seconds.
PUSH_TTL = 3600
# Subscriptions created per client address; logins tried per IMAP account (the same host,
# port, user and mailbox from anywhere), so a reconnect loop cannot hammer a provider.
PUSH_SUBSCRIPTION_RATE = "60/h"
PUSH_LOGIN_RATE = "10/m"

# Push senders: ordinary workers (`celery -A portal worker -Q push`). The monitor's own
# commands (watch, stop, drain) go to its queue idle.<worker-id>, chosen per call.
CELERY_TASK_ROUTES["pushproxy.deliver_push"] = {"queue": "push"}
# Pending push subscriptions whose hand-off nobody took (monitor gone, message expired)
# end as failed, with a reconnect push (every 30 s; also checked when one is read).
CELERY_BEAT_SCHEDULE["expire-push-logins"] = {
    "task": "pushproxy.expire_pending",
    "schedule": 30.0,
}
# The lease reaper: monitors whose shard leases lapsed (kill -9, a lost machine).
CELERY_BEAT_SCHEDULE["reap-push-monitors"] = {
    "task": "pushproxy.reap_monitors",
    "schedule": float(PUSHPROXY_REAP_SECONDS),
}

# ---------------------------------------------------------------------------------------------
# Logging: one line per event on stderr; the process manager collects it.
# ---------------------------------------------------------------------------------------------

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "line": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        # Django's own (django.utils.log.DEFAULT_LOGGING), for runserver's request lines.
        "django.server": {
            "()": "django.utils.log.ServerFormatter",
            "format": "[{server_time}] {message}",
            "style": "{",
        },
    },
    "filters": {
        # Onboarding tokens in logged URLs (Django's request log, runserver) are masked.
        # Every handler carries it (tests/portal/test_redact.py checks that).
        "redact": {"()": "portal.redact.RedactingFilter"},
        "require_debug_true": {"()": "django.utils.log.RequireDebugTrue"},
        "require_debug_false": {"()": "django.utils.log.RequireDebugFalse"},
    },
    "handlers": {
        "stderr": {"class": "logging.StreamHandler", "formatter": "line", "filters": ["redact"]},
        # Django's DEFAULT_LOGGING handlers, redefined with the filter: its `django.server`
        # logger (runserver, `make run`) does not propagate to ours, and the `django`
        # logger writes request lines to `console` (PORTAL_DEBUG) and mails errors.
        "console": {
            "level": "INFO",
            "class": "logging.StreamHandler",
            "filters": ["require_debug_true", "redact"],
        },
        "django.server": {
            "level": "INFO",
            "class": "logging.StreamHandler",
            "formatter": "django.server",
            "filters": ["redact"],
        },
        "mail_admins": {
            "level": "ERROR",
            "class": "django.utils.log.AdminEmailHandler",
            "filters": ["require_debug_false", "redact"],
        },
    },
    "root": {"handlers": ["stderr"], "level": "INFO"},
    "loggers": {
        # Security events (portal/audit.py): one JSON object per line, at INFO.
        "portal.security": {"level": "INFO"},
        # Django's two loggers as DEFAULT_LOGGING has them, on the handlers above: a logger
        # configured here drops the handlers Django gave it.
        "django": {"handlers": ["console", "mail_admins"], "level": "INFO"},
        "django.server": {"handlers": ["django.server"], "level": "INFO", "propagate": False},
        "django.db.backends": {"level": "WARNING"},
        # At INFO, Celery logs every task's return value ("succeeded in 0.1s: {...}"):
        # for the fan-out those are suggested addresses made from people's names.
        # Failures and retries are WARNING and above, and still logged.
        "celery.app.trace": {"level": "WARNING"},
        # imapclient logs every protocol line at DEBUG (LOGIN redacted, but mail metadata).
        "imapclient": {"level": "WARNING"},
    },
}
