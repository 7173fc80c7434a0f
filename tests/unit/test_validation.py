"""Names, sizes and resource amounts: each rule says what was wrong."""

from __future__ import annotations

import pytest

from ncloud.errors import InvalidInput
from ncloud.validation import check_email, check_name, check_resources, format_size, parse_size


@pytest.mark.parametrize("name", ["vision", "a", "team-1.b_c", "x" * 64, "9lives"])
def test_good_names(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "x" * 65, "has space", "a/b", "../x", "tab\there", "nul\x00", "bell\x07", "-lead", ".dot"],
)
def test_bad_names_name_the_rule(name: str) -> None:
    with pytest.raises(InvalidInput, match="1-64 characters"):
        check_name(name, "tenant name")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("4GiB", 4 << 30),
        ("512MiB", 512 << 20),
        ("2G", 2 * 10**9),
        ("1000", 1000),
        (0, 0),
        ("1.5GiB", int(1.5 * (1 << 30))),
    ],
)
def test_sizes(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["abc", "4 parsecs", "-1GiB", "GiB", "", "1e9"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(InvalidInput):
        parse_size(text)


def test_format_size() -> None:
    assert format_size(4 << 30) == "4GiB"
    assert format_size(12) == "12B"


@pytest.mark.parametrize(
    ("cpus", "gpus", "memory", "match"),
    [
        (0, 0, 0, "at least 1"),
        (-1, 0, 0, "negative"),
        (1, -1, 0, "negative"),
        (1, 0, -5, "negative"),
        (1, 0.5, 0, "whole number"),
        (1.5, 0, 0, "whole number"),
    ],
)
def test_bad_resources(cpus: float, gpus: float, memory: int, match: str) -> None:
    with pytest.raises(InvalidInput, match=match):
        check_resources(cpus, gpus, memory)


def test_emails() -> None:
    assert check_email("Ada@Example.com") == "ada@example.com"
    with pytest.raises(InvalidInput):
        check_email("not-an-email")
