"""An error code travels server -> client and comes back as the same class."""

from __future__ import annotations

import pytest

from ncloud import errors


@pytest.mark.parametrize(
    "cls",
    [
        errors.InvalidInput,
        errors.Unauthenticated,
        errors.Forbidden,
        errors.NotFound,
        errors.Conflict,
        errors.QuotaExceeded,
        errors.PayloadTooLarge,
    ],
)
def test_round_trip(cls: type[errors.NcloudError]) -> None:
    original = cls("what went wrong")
    again = errors.error_from_body(original.http_status, original.to_body())
    assert type(again) is cls
    assert again.message == "what went wrong"


def test_unknown_body_maps_by_status() -> None:
    assert isinstance(errors.error_from_body(404, "<html>"), errors.NotFound)
    assert isinstance(errors.error_from_body(502, {"detail": "x"}), errors.ServerError)


def test_codes_are_unique() -> None:
    every: list[type[errors.NcloudError]] = [
        errors.NcloudError,
        *errors._all_subclasses(errors.NcloudError),
    ]
    assert len({c.code for c in every}) == len(every)
    assert errors.QuotaExceeded.http_status == 409
    assert errors.UsageError.exit_code == 2
