"""URI normalisation before location matching (NGINX's ngx_http_parse_complex_uri)."""

import pytest

from jwtgate.errors import HTTPError
from jwtgate.http.uri import escape_path, normalize_path, split_target


@pytest.mark.parametrize("raw, expected", [
    ("/", "/"),
    ("/products/widget1", "/products/widget1"),
    ("/products/", "/products/"),
    ("//products//x", "/products/x"),
    ("/products/../admin", "/admin"),
    ("/products/./x", "/products/x"),
    ("/products/%2e%2e/admin", "/admin"),
    ("/products%2F..%2Fadmin", "/admin"),
    ("/a/b/..", "/a/"),
    ("/a/.", "/a/"),
    ("/caf%C3%A9", "/café"),
    ("/%41", "/A"),
])
def test_normalize(raw, expected):
    assert normalize_path(raw) == expected


@pytest.mark.parametrize("raw", ["/..", "/../etc/passwd", "/a/../../b", "/%2e%2e/x", "/%00", "/%zz", "/%4"])
def test_normalize_refuses(raw):
    with pytest.raises(HTTPError) as e:
        normalize_path(raw)
    assert e.value.status == 400


def test_split_target():
    assert split_target("/p?q=1") == ("", "/p", "q=1")
    assert split_target("http://Example.COM:8080/x?y") == ("example.com", "/x", "y")
    assert split_target("http://h") == ("h", "/", "")
    assert split_target("*") == ("", "*", "")
    for bad in ("x", "ftp://h/", "http://u@h/"):
        with pytest.raises(HTTPError):
            split_target(bad)


def test_escape_path_round_trips_through_normalize():
    for path in ("/a b", "/café", "/x%y", "/a?b#c"):
        assert normalize_path(escape_path(path)) == path
