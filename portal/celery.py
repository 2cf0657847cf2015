"""The Celery app: configured from Django settings (CELERY_ namespace), tasks autodiscovered."""

from __future__ import annotations

import functools
import os

import redis.utils
from celery import Celery


def _remember_the_redis_library_version() -> None:
    """redis-py 8 looks its own version up in the package metadata (importlib.metadata reads
    and parses the METADATA file) every time a client object is built, and kombu's Redis
    transport and Celery's result backend build one per operation: 5% of a push monitor's
    CPU per login (docs/benchmarks.md, "Push fleet path"). The version cannot change while
    the process runs, so the lookup is made once."""
    if not hasattr(redis.utils.get_lib_version, "cache_info"):
        redis.utils.get_lib_version = functools.cache(redis.utils.get_lib_version)


_remember_the_redis_library_version()
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

app = Celery("portal")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
