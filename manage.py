#!/usr/bin/env python
"""Django's command-line entry point for mailportal."""

from __future__ import annotations

import os
import sys


def main() -> None:
    if sys.argv[1:2] == ["run_push_monitor"]:
        # The push monitor's sessions are greenlets: gevent must patch sockets, threads and
        # select before Django, psycopg or imapclient import them (docs/push.md).
        from gevent import monkey

        monkey.patch_all()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
