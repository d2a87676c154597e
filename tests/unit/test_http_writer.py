"""Field-value validation: what may become a header line (RFC 9110 §5.5)."""

from __future__ import annotations

from jwtgate.http.writer import valid_field_value


def test_every_octet_is_judged_by_the_rfc_rule() -> None:
    # field-value = *( HTAB / SP / VCHAR / obs-text ): every control but HTAB is refused,
    # wherever it sits in the value.
    for octet in range(256):
        allowed = octet == 0x09 or 0x20 <= octet <= 0x7E or octet >= 0x80
        for value in (bytes([octet]), b"abc" + bytes([octet]), bytes([octet]) + b"xyz",
                      b"a" * 500 + bytes([octet]) + b"b" * 500):
            assert valid_field_value(value) is allowed, (octet, value[:8])


def test_injection_shaped_values_are_refused() -> None:
    assert not valid_field_value(b"ok\r\nX-Injected: 1")
    assert not valid_field_value(b"ok\nX-Injected: 1")
    assert not valid_field_value(b"nul\x00")
    assert valid_field_value(b"")
    assert valid_field_value("caf\u00e9 \t ok".encode())
