"""Claim rendering ($jwt_claim_*) and nested claim lookup (auth_jwt_claim_set)."""

from __future__ import annotations

from typing import Any

import pytest

from jwtgate.jose.claims import claim_to_str, lookup_path


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("quotes", "quotes"),
        ("", ""),
        ("ünïcode ✓", "ünïcode ✓"),
        (42, "42"),
        (-7, "-7"),
        (1300819380, "1300819380"),
        (1.5, "1.5"),
        (1e100, "1e+100"),
        (True, "true"),
        (False, "false"),
        (None, ""),
        (["admin", "user"], "admin,user"),
        ([1, True, None, "x"], "1,true,,x"),
        ([], ""),
        ([["a", "b"], "c"], "a,b,c"),
        ([{"a": 1}], '{"a":1}'),
        ({"a": [1, 2], "b": "é"}, '{"a":[1,2],"b":"é"}'),
        ({}, "{}"),
    ],
)
def test_claim_to_str(value: Any, text: str) -> None:
    assert claim_to_str(value) == text


CLAIMS = {"sub": "quotes", "realm": {"roles": ["a", "b"], "meta": {"level": 3, "none": None}}, "flag": False}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (["sub"], "quotes"),
        (["realm", "roles"], ["a", "b"]),
        (["realm", "meta", "level"], 3),
        (["flag"], False),
        (["missing"], None),
        (["realm", "missing"], None),
        (["sub", "deeper"], None),  # a string has no members
        (["realm", "roles", "0"], None),  # arrays are not indexed
        (["realm", "meta", "none"], None),
        ([], CLAIMS),
    ],
)
def test_lookup_path(path: list[str], expected: Any) -> None:
    assert lookup_path(CLAIMS, path) == expected
