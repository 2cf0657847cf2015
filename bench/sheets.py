"""Onboarding sheet benchmark (issue 6): a batch sheet of N accounts, as the Celery task does it.

Run as `.venv/bin/python bench/sheets.py [--accounts 1000]`.

Uses a scratch SQLite database under var/bench/ (migrated afresh) and the `sql` mailbox
backend, so the figures are the portal's own work: N new passwords (argon2id at the
production parameters, the dominant cost), N DCLOGIN codes (QR matrices) and one PDF. Prints
the time of each phase, the PDF's size and pages, and checks that the sheet's row is gone
after its one download. Exit code 0 with figures, 2 when a check fails.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=1000)
    options = parser.parse_args()
    scratch = ROOT / "var" / "bench" / "sheets.sqlite3"
    scratch.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{scratch}{suffix}").unlink(missing_ok=True)
    os.environ.update(DATABASE_URL=f"sqlite:///{scratch}", DJANGO_SETTINGS_MODULE="portal.settings")
    os.environ.pop("REDIS_URL", None)
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.contrib.auth.models import User
    from django.core.management import call_command

    from accounts.models import SheetJob
    from accounts.services import sheets
    from accounts.services.accounts import create_account, generate_password
    from providers import qr
    from providers import sheets as pdf_sheets

    call_command("migrate", verbosity=0)
    call_command("import_providers", str(ROOT / "deploy" / "demo-providers.json"), verbosity=0)
    from providers.models import ProviderDomain

    domain = ProviderDomain.objects.select_related("provider").filter(provider__hosted=True)[0]
    admin = User.objects.create_superuser("bench", "bench@example.org", generate_password())

    started = time.perf_counter()
    ids = [
        create_account(
            domain=domain,
            local_part=f"bench{index:05d}",
            password=generate_password(),
            created_via="admin",
        ).pk
        for index in range(options.accounts)
    ]
    created_s = time.perf_counter() - started

    started = time.perf_counter()
    matrices = [qr.matrix(f"dclogin:bench{index:05d}@x.example?v=1&p=x") for index in range(200)]
    matrix_ms = (time.perf_counter() - started) / len(matrices) * 1000

    job = sheets.start_sheet(account_ids=ids, created_by=admin)  # eager: built on commit
    job = SheetJob.objects.get(pk=job.pk)
    build_s = (job.updated_at - job.created_at).total_seconds()
    started = time.perf_counter()
    pdf = sheets.take_sheet(job_id=job.pk, user=admin)
    take_s = time.perf_counter() - started

    cards = [
        pdf_sheets.Card(f"dclogin:b{i}@x.example?v=1&p=x", f"b{i}@x.example", "X", ("a", "b", "c"))
        for i in range(options.accounts)
    ]
    started = time.perf_counter()
    pdf_only = pdf_sheets.pdf(cards)
    pdf_s = time.perf_counter() - started

    pages = pdf.count(b"/Type /Page\n") or pdf.count(b"/Type /Page")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows = [
        ("accounts", str(options.accounts)),
        ("create accounts (argon2id each)", f"{created_s:.1f} s"),
        ("sheet job: reset passwords + codes + PDF", f"{build_s:.1f} s"),
        ("  of which PDF of the cards alone", f"{pdf_s:.1f} s ({len(pdf_only) / 1e6:.1f} MB)"),
        ("QR matrix per code", f"{matrix_ms:.1f} ms"),
        ("download (decrypt, delete row)", f"{take_s * 1000:.0f} ms"),
        ("sheet PDF", f"{len(pdf) / 1e6:.1f} MB, {pages} pages"),
        ("peak RSS of this process", f"{peak_mb:.0f} MB"),
        ("done / failed", f"{job.done} / {job.failed}"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    ok = job.done == options.accounts and not SheetJob.objects.exists() and pdf.startswith(b"%PDF")
    return 0 if ok else 2


if __name__ == "__main__":
    sys.exit(main())
