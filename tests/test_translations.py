"""The German catalog (locale/de): complete for the pages people see, and compiled.

The compiled .mo is committed, so that `make run` and a deployment need no gettext tools;
this test proves it says what the .po says. Regenerate both with `make messages`.
"""

from __future__ import annotations

import ast
import gettext
import re
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PO = ROOT / "locale" / "de" / "LC_MESSAGES" / "django.po"
MO = PO.with_suffix(".mo")
# Sources of what people registering and account owners read: every message
# from these must be translated.
PAGE_SOURCES = (
    "templates/providers/registration/",
    "templates/includes/",
    "templates/csrf_failure.html",
    "providers/forms.py",
    "providers/views_registration.py",
    "providers/services/registration.py",
    "accounts/services/names.py",
    "accounts/services/accounts.py",
    # Account self-service (/account/).
    "templates/accounts/self_service/",
    "accounts/views.py",
    "accounts/forms.py",
    "accounts/services/sessions.py",
    "accounts/web.py",
    "portal/ratelimit.py",
)


@dataclass
class Entry:
    locations: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    msgid: str = ""
    plural: str | None = None
    msgstr: dict[int, str] = field(default_factory=dict)


def read_po(path: Path) -> list[Entry]:
    """The entries of a .po file (enough of the format for gettext's own output)."""
    entries = []
    for block in path.read_text(encoding="utf-8").strip().split("\n\n"):
        entry, target = Entry(), ""
        for line in block.splitlines():
            if line.startswith("#:"):
                entry.locations += line[2:].split()
            elif line.startswith("#,"):
                entry.flags += [flag.strip() for flag in line[2:].split(",")]
            elif match := re.match(r'^(msgid|msgid_plural|msgstr(?:\[(\d)\])?) (".*")$', line):
                target = match.group(1)
                value = ast.literal_eval(match.group(3))
                if target == "msgid":
                    entry.msgid = value
                elif target == "msgid_plural":
                    entry.plural = value
                else:
                    target = f"msgstr{match.group(2) or 0}"
                    entry.msgstr[int(match.group(2) or 0)] = value
            elif line.startswith('"'):
                value = ast.literal_eval(line)
                if target == "msgid":
                    entry.msgid += value
                elif target == "msgid_plural":
                    entry.plural = (entry.plural or "") + value
                elif target.startswith("msgstr"):
                    entry.msgstr[int(target[6:])] += value
        entries.append(entry)
    return entries


def test_every_message_of_the_pages_is_translated_to_german() -> None:
    page_entries = [
        entry
        for entry in read_po(PO)
        if entry.msgid and any(loc.startswith(PAGE_SOURCES) for loc in entry.locations)
    ]
    untranslated = [
        entry.msgid
        for entry in page_entries
        if "fuzzy" in entry.flags or not entry.msgstr or not all(entry.msgstr.values())
    ]

    assert len(page_entries) > 50  # the locations are there to scope this test
    assert untranslated == []


def test_the_committed_mo_says_what_the_po_says() -> None:
    with MO.open("rb") as handle:
        catalog = gettext.GNUTranslations(handle)
    stale = []
    for entry in read_po(PO):
        if not entry.msgid or "fuzzy" in entry.flags or not all(entry.msgstr.values()):
            continue
        if entry.plural is None:
            if catalog.gettext(entry.msgid) != entry.msgstr[0]:
                stale.append(entry.msgid)
        elif (
            catalog.ngettext(entry.msgid, entry.plural, 1),
            catalog.ngettext(entry.msgid, entry.plural, 5),
        ) != (entry.msgstr[0], entry.msgstr[1]):
            stale.append(entry.msgid)

    assert stale == []


def test_translated_formats_keep_their_placeholders() -> None:
    placeholder = re.compile(r"%\((\w+)\)[sd]")
    broken = [
        entry.msgid
        for entry in read_po(PO)
        for text in entry.msgstr.values()
        if text
        and set(placeholder.findall(text)) - set(placeholder.findall(entry.plural or entry.msgid))
    ]

    assert broken == []
