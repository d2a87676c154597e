"""``auth_jwt ... token=$variable``: the token from a query argument or a cookie, and then
only from there."""

from __future__ import annotations

from jwtgate_e2e import POST_TOKEN, bearer, curl, mint_hs, post_conf


def test_query_argument_token_with_curl(gateway, upstream, post_token_file):
    gw = gateway(post_conf(auth='auth_jwt "Products API" token=$arg_apijwt;'))
    token = post_token_file.read_text().strip()
    # the post's command: curl http://localhost/products/widget1?apijwt=`cat quotes.jwt`
    r = curl(f"{gw.url}/products/widget1?apijwt={token}")
    assert r.returncode == 0, r.stderr
    assert r.status == 200, r.body
    assert upstream.last.values("API-Client") == ["quotes"]
    # the request URI goes upstream unchanged, query included
    assert upstream.last.path == f"/products/widget1?apijwt={token}"
    # among other arguments
    r = curl(f"{gw.url}/products/widget1?a=1&apijwt={token}&b=2")
    assert r.status == 200
    assert upstream.last.path == f"/products/widget1?a=1&apijwt={token}&b=2"


def test_query_argument_token_refusals(gateway, upstream):
    gw = gateway(post_conf(auth='auth_jwt "Products API" token=$arg_apijwt;'))
    # a Bearer header alone is not where this location looks
    r = gw.get("/products/widget1", bearer(POST_TOKEN))
    assert r.status == 401
    assert r.header("WWW-Authenticate") == 'Bearer realm="Products API"'
    # a token under another argument name is not it either
    assert gw.get(f"/products/widget1?jwt={POST_TOKEN}").status == 401
    assert gw.get("/products/widget1?apijwt=").status == 401
    forged = mint_hs({"sub": "quotes"}, key=b"wrong")
    r = gw.get(f"/products/widget1?apijwt={forged}", bearer(POST_TOKEN))
    assert r.status == 401
    assert 'error="invalid_token"' in r.header("WWW-Authenticate")
    assert upstream.requests == []


def test_cookie_token(gateway, upstream):
    gw = gateway(post_conf(auth='auth_jwt "Products API" token=$cookie_auth;'))
    r = curl(f"{gw.url}/products/widget1", "-b", f"auth={POST_TOKEN}")
    assert r.returncode == 0, r.stderr
    assert r.status == 200, r.body
    assert upstream.last.values("API-Client") == ["quotes"]
    r = curl(f"{gw.url}/products/widget1", "-b", f"theme=dark; auth={POST_TOKEN}; lang=en")
    assert r.status == 200
    # two Cookie header lines are one cookie list
    r = curl(f"{gw.url}/products/widget1", "-H", "Cookie: theme=dark", "-H", f"Cookie: auth={POST_TOKEN}")
    assert r.status == 200
    n_ok = len(upstream.requests)
    assert n_ok == 3
    # no cookie, another cookie, only the Bearer header: 401
    assert gw.get("/products/widget1").status == 401
    assert gw.get("/products/widget1", {"Cookie": f"xauth={POST_TOKEN}"}).status == 401
    assert gw.get("/products/widget1", bearer(POST_TOKEN)).status == 401
    assert gw.get("/products/widget1", {"Cookie": "auth=" + mint_hs({"sub": "q"}, key=b"x")}).status == 401
    assert len(upstream.requests) == n_ok
