"""Value parsers against tables of NGINX examples (ngx_parse_time, ngx_parse_size,
limit_req_zone rate=, ngx_conf_set_flag_slot)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jwtgate.conf.values import parse_flag, parse_rate, parse_size, parse_time

BIG = str(2**63)  # one past NGX_MAX_INT_T_VALUE


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("0", 0.0),
        ("30", 30.0),
        ("30s", 30.0),
        ("500ms", 0.5),
        ("1ms", 0.001),
        ("1m", 60.0),
        ("90m", 5400.0),
        ("1h", 3600.0),
        ("1d", 86400.0),
        ("1w", 604800.0),
        ("1M", 2592000.0),
        ("1y", 31536000.0),
        ("1h30m", 5400.0),
        ("1h 30m", 5400.0),
        ("1m 30s", 90.0),
        ("1m  30s", 90.0),
        ("1d12h", 129600.0),
        ("1y2M3w4d5h6m7s8ms", 31536000 + 2 * 2592000 + 3 * 604800 + 4 * 86400 + 5 * 3600 + 6 * 60 + 7.008),
        ("1s1ms", 1.001),
        ("1m30s500ms", 90.5),
        ("007s", 7.0),
        # NGINX quirks, kept on purpose:
        ("1h30", 3630.0),   # a bare number after units is seconds
        ("1hm", 3600.0),    # a unit without a number adds nothing
        ("30 ", 30.0),      # a space ends a bare number of seconds
        (" 30", 30.0),
    ],
)
def test_parse_time(text: str, seconds: float) -> None:
    assert parse_time(text) == pytest.approx(seconds, abs=1e-9)


@pytest.mark.parametrize(
    "text",
    [
        "", " ", "s", "ms", "h", "-1", "-1s", "+1s", "1.5s", "1.5", "1x", "1S", "1H", "1D", "1sec", "1min",
        "30s1m",     # units out of order
        "1m1m",      # repeated
        "1ms5s",     # ms is the smallest
        "1ms1ms",
        "1ss",
        "1 h",       # a space ends the number: "h" then comes after seconds
        "1 2s",
        "1s 2 3",
        "1y1y",
        "1M1y",
        "１s",       # only ASCII digits
        BIG, BIG + "s", "9" * 40 + "y", "300000000000y",
    ],
)
def test_parse_time_invalid(text: str) -> None:
    with pytest.raises(ValueError):
        parse_time(text)


def test_parse_time_kinds() -> None:
    # ngx_conf_set_msec_slot refuses y and M; ngx_conf_set_sec_slot refuses ms.
    assert parse_time("1w", kind="msec") == 604800.0
    assert parse_time("250ms", kind="msec") == 0.25
    for text in ["1y", "1M", "1y1d"]:
        with pytest.raises(ValueError):
            parse_time(text, kind="msec")
    assert parse_time("1y", kind="sec") == 31536000.0
    assert parse_time("5", kind="sec") == 5.0
    with pytest.raises(ValueError):
        parse_time("500ms", kind="sec")


def test_parse_time_overflow_bounds() -> None:
    # msec resolution: at most 2**63-1 ms; sec resolution: 2**63-1 s.
    assert parse_time(str((2**63 - 1) // 1000)) == pytest.approx((2**63 - 1) // 1000)
    with pytest.raises(ValueError):
        parse_time(str((2**63 - 1) // 1000 + 1))
    assert parse_time(str(2**63 - 1), kind="sec") == float(2**63 - 1)
    with pytest.raises(ValueError):
        parse_time("1y" + str(2**63 - 1), kind="sec")


@given(st.text(max_size=20))
def test_parse_time_never_raises_other_errors(text: str) -> None:
    try:
        value = parse_time(text)
    except ValueError:
        return
    assert value >= 0


@pytest.mark.parametrize(
    "text, size",
    [
        ("0", 0),
        ("1", 1),
        ("1024", 1024),
        ("1k", 1024),
        ("1K", 1024),
        ("16k", 16384),
        ("1m", 1048576),
        ("10M", 10485760),
        ("1g", 1073741824),
        ("2G", 2147483648),
        ("007", 7),
        (str(2**63 - 1), 2**63 - 1),
    ],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    "text",
    ["", "k", "m", "-1", "+1", "1.5m", "1 k", " 1", "1kb", "1t", "1T", "0x10", "1e3", "１", BIG, str(2**63 // 1024) + "k"],
)
def test_parse_size_invalid(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize(
    "text, rate",
    [
        ("10r/s", 10.0),
        ("1r/s", 1.0),
        ("30r/m", 0.5),
        ("1r/m", 1 / 60),
        ("600r/m", 10.0),
        ("5", 5.0),  # NGINX: no unit means r/s
    ],
)
def test_parse_rate(text: str, rate: float) -> None:
    assert parse_rate(text) == pytest.approx(rate)


@pytest.mark.parametrize(
    "text", ["", "r/s", "0r/s", "0", "-1r/s", "1.5r/s", "10r/h", "10 r/s", "10r/S", "10rps", "rate=10r/s", BIG + "r/s"]
)
def test_parse_rate_invalid(text: str) -> None:
    with pytest.raises(ValueError):
        parse_rate(text)


@pytest.mark.parametrize("text, flag", [("on", True), ("off", False), ("ON", True), ("Off", False), ("oN", True)])
def test_parse_flag(text: str, flag: bool) -> None:
    assert parse_flag(text) is flag


@pytest.mark.parametrize("text", ["", "yes", "no", "1", "0", "true", "on ", " off", "o n", "ｏｎ"])
def test_parse_flag_invalid(text: str) -> None:
    with pytest.raises(ValueError, match='it must be "on" or "off"'):
        parse_flag(text)
