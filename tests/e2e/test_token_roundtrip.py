"""Round trip through the token tooling and a running gateway, for every signature algorithm.

``jwtgate jwk generate`` makes a key, ``jwtgate jwk public`` its public JWK Set (the file a
gateway operator is handed), ``jwtgate token sign --alg ALG`` a token; a running gateway whose
location uses that public set accepts the token (200) and refuses one signed by another key
with the same ``kid`` (401; that key and token are made in process by the same library
functions, to keep the test fast). Keys without an ``alg`` member serve every algorithm of
their type, so one RSA key serves RS* and PS*, one 512-bit oct key HS*. HMAC keys are secrets:
``jwk public`` refuses to publish them, so the HS* locations use the generated set itself.
Encrypted tokens have no round trip here: the gateway does not accept JWE yet.
"""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor

from jwtgate.jose.issue import TokenSpec, generate_jwk, issue_token, write_jwks_file
from jwtgate_e2e import JWTGATE, bearer

# key name -> jwk generate arguments
KEYS = {
    "oct": ["--kty", "oct", "--size", "512"],
    "rsa": ["--kty", "RSA"],
    "p256": ["--kty", "EC", "--crv", "P-256"],
    "p384": ["--kty", "EC", "--crv", "P-384"],
    "p521": ["--kty", "EC", "--crv", "P-521"],
    "ed25519": ["--kty", "OKP", "--crv", "Ed25519"],
    "ed448": ["--kty", "OKP", "--crv", "Ed448"],
}
# location -> (algorithm, key name)
ALGORITHMS = {
    "HS256": ("HS256", "oct"), "HS384": ("HS384", "oct"), "HS512": ("HS512", "oct"),
    "RS256": ("RS256", "rsa"), "RS384": ("RS384", "rsa"), "RS512": ("RS512", "rsa"),
    "PS256": ("PS256", "rsa"), "PS384": ("PS384", "rsa"), "PS512": ("PS512", "rsa"),
    "ES256": ("ES256", "p256"), "ES384": ("ES384", "p384"), "ES512": ("ES512", "p521"),
    "EdDSA-Ed25519": ("EdDSA", "ed25519"), "EdDSA-Ed448": ("EdDSA", "ed448"),
}


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([JWTGATE, *map(str, args)], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


def ok(*args) -> str:
    p = cli(*args)
    assert p.returncode == 0 and "Traceback" not in p.stderr, f"jwtgate {' '.join(map(str, args))}: {p.stderr}"
    return p.stdout


def make_key(tmp, name: str) -> tuple[str, str, str]:
    """(private set, the set the gateway gets, a set with another key under the same kid)."""
    private, public, other = (str(tmp / f"{name}.{part}.jwk") for part in ("private", "public", "other"))
    ok("jwk", "generate", *KEYS[name], "--kid", name, "-o", private)
    if name == "oct":
        p = cli("jwk", "public", private)
        assert p.returncode == 1 and "oct keys are secrets, never published" in p.stderr
        public = private
    else:
        ok("jwk", "public", private, "-o", public)
    args = dict(zip(KEYS[name][::2], KEYS[name][1::2]))
    size = int(args["--size"]) if "--size" in args else None
    write_jwks_file(other, [generate_jwk(args["--kty"], kid=name, crv=args.get("--crv"), size=size)])
    return private, public, other


def test_every_algorithm_round_trips_through_a_running_gateway(gateway, upstream, tmp_path):
    with ThreadPoolExecutor(4) as pool:
        keys = dict(zip(KEYS, pool.map(lambda n: make_key(tmp_path, n), KEYS)))

        def tokens(location: str) -> tuple[str, str]:
            alg, key = ALGORITHMS[location]
            good = ok("token", "sign", "--key", keys[key][0], "--alg", alg, "--sub", location, "--exp", "1h")
            forged = issue_token(TokenSpec(key=keys[key][2], alg=alg, sub=location)).token
            return good.strip(), forged
        made = dict(zip(ALGORITHMS, pool.map(tokens, ALGORITHMS)))
    for private, public, _ in keys.values():
        if public != private:
            assert '"d"' not in open(public).read()
    locations = "\n".join(f"""
        location /{name}/ {{
            auth_jwt "{name}";
            auth_jwt_key_file {keys[key][1]};
            proxy_pass http://api;
            proxy_set_header API-Client $jwt_claim_sub;
        }}""" for name, (_, key) in ALGORITHMS.items())
    gw = gateway(f"""
        upstream api {{ server 127.0.0.1:{{upstream_port}}; }}
        server {{
            listen 127.0.0.1:{{port}};
            {locations}
        }}""")
    results = {}
    for name, (good, forged) in made.items():
        accepted = gw.get(f"/{name}/r", bearer(good))
        sent = upstream.last.values("API-Client") if accepted.status == 200 else None
        refused = gw.get(f"/{name}/r", bearer(forged))
        results[name] = (accepted.status, sent, refused.status, refused.header("WWW-Authenticate"))
    expected = {name: (200, [name], 401, f'Bearer realm="{name}", error="invalid_token"') for name in ALGORITHMS}
    assert results == expected
