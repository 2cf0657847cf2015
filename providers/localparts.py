"""Pure: people's names in any script as ASCII local-part candidates, in a sensible order.

Transliteration is AnyAscii's (one standard romanisation per script: Cyrillic, Greek, Han,
Arabic, Latin diacritics, ...), after the rules of the person's country where they differ
from it (German ü → ue, Danish ø → oe, Ukrainian ghe → h). Whatever has no letters in ASCII
(emoji, symbols, punctuation) is dropped, never spelled out. The candidates are only
proposals: the caller still checks each against the provider's rules, the reserved names
and the accounts that exist (accounts.services.accounts.available_local_parts).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator

from anyascii import anyascii

# Country-specific spellings that differ from the generic romanisation, applied before it.
# Keys are ISO 3166-1 alpha-2 codes; values map lower-case characters.
_GERMAN = {"ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss"}
_DANO_NORWEGIAN = {"æ": "ae", "ø": "oe", "å": "aa"}
# Ukrainian national romanisation (2010) where it differs from the Russian-style default.
_UKRAINIAN = {
    "г": "h", "ґ": "g", "и": "y", "і": "i", "ї": "i", "є": "ie", "й": "i",  # noqa: RUF001
    "ю": "iu", "я": "ia", "х": "kh", "ц": "ts", "щ": "shch", "ж": "zh",  # noqa: RUF001
}  # fmt: skip
COUNTRY_RULES: dict[str, dict[str, str]] = {
    "DE": _GERMAN,
    "AT": _GERMAN,
    "CH": _GERMAN,
    "LI": _GERMAN,
    "LU": _GERMAN,
    "DK": _DANO_NORWEGIAN,
    "NO": _DANO_NORWEGIAN,
    "UA": _UKRAINIAN,
}

# Numbers appended once the plain patterns are used up: short first.
MAX_NUMBER = 999
_NOT_ALNUM = re.compile(r"[^a-z0-9]+")


def transliterate(name: str, country: str = "") -> str:
    """`name` as lower-case ASCII letters and digits only ("" if nothing is left).

    >>> transliterate("Zoë O'Brien"), transliterate("Jürgen", "DE"), transliterate("李小龍")
    ('zoeobrien', 'juergen', 'lixiaolong')
    """
    text = unicodedata.normalize("NFC", name).lower()
    rules = COUNTRY_RULES.get(country.upper(), {})
    out = []
    for char in text:
        category = unicodedata.category(char)
        if category[0] not in "LMN":
            continue  # spaces, apostrophes, hyphens, symbols, emoji: not part of the name
        out.append(rules.get(char) or anyascii(char))
    return _NOT_ALNUM.sub("", "".join(out).lower())


def _words(name: str, country: str) -> list[str]:
    """The words of a name part, each transliterated; empty words dropped."""
    return [w for w in (transliterate(word, country) for word in re.split(r"\s+", name)) if w]


def candidates(
    first_name: str, last_name: str, *, country: str = "", max_length: int = 64
) -> Iterator[str]:
    """Local parts to offer for this name, best first, without repeats.

    first.last, firstlast, f.last, first.l, first_last, last.first; then a version of
    first.last shortened to `max_length`; then the first three with 1, 2, 3 ... appended.
    Nothing longer than `max_length`: for a name too long to take a number, the numbered
    version is first.last shortened further, by the width of MAX_NUMBER.
    With only one name part: that part, then with numbers. Several words in a part are run
    together ("Mary Ann" → maryann). Nothing for a name without letters or digits.
    """
    first = "".join(_words(first_name, country))
    last = "".join(_words(last_name, country))
    room = max_length - len(str(MAX_NUMBER))  # for a base that takes every number
    to_number: list[str] = []  # shortened bases for numbers, ahead of the others
    if first and last:
        bases = [
            f"{first}.{last}",
            f"{first}{last}",
            f"{first[0]}.{last}",
            f"{first}.{last[0]}",
            f"{first}_{last}",
            f"{last}.{first}",
        ]
        if len(bases[0]) > max_length:
            bases.append(_shortened(first, last, max_length))
            if room >= 3:
                to_number.append(_shortened(first, last, room))
    elif first or last:
        single = first or last
        bases = [single]
        if len(single) > max_length:
            bases.append(single[:max_length])
            if room >= 1:
                to_number.append(single[:room])
    else:
        return
    seen: set[str] = set()
    for base in bases:
        if base not in seen and len(base) <= max_length:
            seen.add(base)
            yield base
    fitting = [base for base in bases if len(base) < max_length]
    numbered = list(dict.fromkeys(to_number + fitting))
    for number in range(1, MAX_NUMBER + 1):
        for base in numbered[:3]:
            candidate = f"{base}{number}"
            if len(candidate) <= max_length and candidate not in seen:
                seen.add(candidate)
                yield candidate


def _shortened(first: str, last: str, length: int) -> str:
    """first.last in at most `length` characters, keeping the start of each part: half each
    when both are long, the rest to the other when one is short."""
    total = length - 1  # the dot
    keep_last = min(len(last), max(1, total // 2))
    keep_first = min(len(first), max(1, total - keep_last))
    keep_last = min(len(last), max(1, total - keep_first))
    return f"{first[:keep_first]}.{last[:keep_last]}"
