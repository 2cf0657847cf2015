"""Pure: names in any script as ASCII local-part candidates (providers.localparts)."""

from __future__ import annotations

import itertools
import re

from hypothesis import given
from hypothesis import strategies as st

from providers.localparts import candidates, transliterate


def test_transliterate_follows_country_rules_where_they_differ() -> None:
    assert transliterate("Jürgen Größe") == "jurgengrosse"
    assert transliterate("Jürgen Größe", "DE") == "juergengroesse"
    assert transliterate("Jürgen", "at") == "juergen"
    assert transliterate("Søren Ærø", "DK") == "soerenaeroe"
    assert transliterate("Søren Ærø") == "sorenaero"
    assert transliterate("Григорій", "UA") == "hryhorii"
    assert transliterate("Григорий") == "grigoriy"


def test_transliterate_drops_what_has_no_letters() -> None:
    assert transliterate("Zoë 😀 O'Brien-Smith ★") == "zoeobriensmith"
    assert transliterate("😀") == ""


def test_candidates_for_two_parts_come_in_the_documented_order() -> None:
    assert list(itertools.islice(candidates("Juliet", "Capulet"), 9)) == [
        "juliet.capulet",
        "julietcapulet",
        "j.capulet",
        "juliet.c",
        "juliet_capulet",
        "capulet.juliet",
        "juliet.capulet1",
        "julietcapulet1",
        "j.capulet1",
    ]


def test_candidates_for_one_part_are_it_then_numbers() -> None:
    assert list(itertools.islice(candidates("", "Capulet"), 3)) == [
        "capulet",
        "capulet1",
        "capulet2",
    ]


def test_candidates_of_a_name_without_letters_are_none() -> None:
    assert list(candidates("😀", "")) == []


def test_candidates_never_exceed_the_longest_length() -> None:
    found = list(itertools.islice(candidates("a" * 300, "b" * 300, max_length=32), 50))
    assert found
    assert max(map(len, found)) <= 32
    assert found[0] == "aaaaaaaaaaaaaaaa.bbbbbbbbbbbbbbb"


def test_candidates_for_a_long_name_leave_room_for_numbers() -> None:
    # A base exactly as long as allowed cannot take a number: the numbered ones are
    # shortened by the width of the largest number (999) instead.
    two_parts = list(itertools.islice(candidates("a" * 150, "b" * 150, max_length=32), 1000))
    one_part = list(itertools.islice(candidates("c" * 150, "", max_length=32), 1000))

    assert two_parts[:3] == [
        "a" * 16 + "." + "b" * 15,
        "a" * 14 + "." + "b" * 14 + "1",
        "a" * 14 + "." + "b" * 14 + "2",
    ]
    assert two_parts[-1] == "a" * 14 + "." + "b" * 14 + "999"
    assert one_part[:2] == ["c" * 32, "c" * 29 + "1"]
    for found in (two_parts, one_part):
        assert len(found) == 1000  # the shortened name, then 999 numbers
        assert max(map(len, found)) <= 32


def test_candidates_give_a_short_part_the_room_a_long_one_leaves() -> None:
    found = list(itertools.islice(candidates("Al", "b" * 150, max_length=32), 2))

    assert found == ["al.b", "al." + "b" * 29]


@given(st.text(max_size=60), st.text(max_size=60), st.sampled_from(["", "DE", "UA", "DK", "FR"]))
def test_candidates_are_always_lower_case_ascii_without_repeats(
    first: str, last: str, country: str
) -> None:
    found = list(itertools.islice(candidates(first, last, country=country, max_length=64), 40))
    assert all(re.fullmatch(r"[a-z0-9._]{1,64}", candidate) for candidate in found)
    assert len(set(found)) == len(found)
