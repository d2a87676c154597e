"""``jwtgate jwk``: make, import and publish JSON Web Keys (RFC 7517).

The work is done by :mod:`jwtgate.jose.keygen`; this module maps options to it and prints.
Private key material is only ever printed when asked for (``generate`` or ``from-secret``
without ``-o`` print the new JWK Set on stdout); with ``-o`` it goes to the file only.
"""

from __future__ import annotations

import os
from typing import Any

import click

from jwtgate.cli.console import EXIT_CODES_HELP, echo_json, fail, one_line_errors, read_argument, warn
from jwtgate.jose.keygen import (
    CURVES,
    KEY_MANAGEMENT_ALGORITHMS,
    SIGNATURE_ALGORITHMS,
    add_to_jwks_file,
    format_jwks,
    generate_jwk,
    import_jwk,
    is_private_jwk,
    jwk_from_pem,
    jwk_from_secret,
    key_warnings,
    parse_jwks,
    public_jwks,
    read_jwks_file,
    thumbprint,
    write_jwks_file,
)

__all__ = ["jwk"]

_ALGS = click.Choice([*SIGNATURE_ALGORITHMS, *KEY_MANAGEMENT_ALGORITHMS])
_USES = click.Choice(["sig", "enc"])
_KID = click.option("--kid", required=True, help="The key ID (JWK \"kid\"); tokens name their key with it.")
_ALG = click.option("--alg", type=_ALGS, help="Bind the key to one algorithm (JWK \"alg\").")
_USE = click.option("--use", type=_USES, help="Bind the key to signatures or encryption (JWK \"use\").")
_OUT = click.option("-o", "--output", "output", type=click.Path(dir_okay=False),
                    help="Append the key to this JWK Set file (created if absent; written atomically, "
                         "mode 0600 when it holds private keys) instead of printing it.")
_JSON = click.option("--json", "as_json", is_flag=True, help="With -o: print a JSON summary.")


def _size(jwk: dict[str, Any]) -> str:
    key = import_jwk(jwk, "the key")
    if jwk["kty"] == "oct":
        return f"{len(key.raw_value) * 8} bits"
    if jwk["kty"] == "RSA":
        return f"{key.raw_value.key_size} bits"
    return str(jwk.get("crv"))


def _emit(jwk: dict[str, Any], output: str | None, as_json: bool) -> None:
    """Print the new key as a JWK Set, or add it to ``output`` and print a summary."""
    for message in key_warnings([jwk]):
        warn(message)
    if output is None:
        click.echo(format_jwks([jwk]), nl=False)
        return
    count = add_to_jwks_file(output, jwk)
    summary = {"file": output, "kid": jwk.get("kid"), "kty": jwk["kty"], "size": _size(jwk),
               "alg": jwk.get("alg"), "use": jwk.get("use"), "private": is_private_jwk(jwk),
               "thumbprint": thumbprint(jwk), "keys": count}
    if as_json:
        echo_json(summary)
        return
    kind = "private" if summary["private"] else "public"
    click.echo(f'{output}: added {kind} {jwk["kty"]} key "{jwk.get("kid")}" ({summary["size"]}), '
               f"{count} key(s) in the file; thumbprint {summary['thumbprint']}")


@click.group("jwk", context_settings={"help_option_names": ["-h", "--help"]})
def jwk() -> None:
    """Make, import and publish JSON Web Keys (RFC 7517) for auth_jwt_key_file.

    \b
    Examples:
      jwtgate jwk from-secret fantasticjwt --kid 0001 -o conf/api_secret.jwk
      jwtgate jwk generate --kty EC --crv P-256 --kid ec1 -o private.jwk
      jwtgate jwk public private.jwk -o public.jwk
    """


@jwk.command("generate", epilog=EXIT_CODES_HELP)
@click.option("--kty", required=True, type=click.Choice(["oct", "RSA", "EC", "OKP"]), help="Key type.")
@click.option("--size", type=int, help="Bits: oct (default 256, or what --alg needs) or RSA (default 2048).")
@click.option("--crv", type=click.Choice([*CURVES["EC"], *CURVES["OKP"]]),
              help="Curve: EC P-256 (default), P-384, P-521; OKP Ed25519 (default), Ed448.")
@_ALG
@_USE
@_KID
@_OUT
@_JSON
@one_line_errors
def generate(kty: str, size: int | None, crv: str | None, alg: str | None, use: str | None, kid: str,
             output: str | None, as_json: bool) -> None:
    """Generate a new private key (joserfc, from the system's CSPRNG).

    Without -o the new JWK Set, private key included, is printed on stdout.

    \b
    Examples:
      jwtgate jwk generate --kty RSA --kid rsa1 --alg RS256 -o private.jwk
      jwtgate jwk generate --kty OKP --crv Ed25519 --kid ed1 -o private.jwk
      jwtgate jwk generate --kty oct --alg HS512 --kid hs1 -o secret.jwk
    """
    _emit(generate_jwk(kty, kid=kid, size=size, crv=crv, alg=alg, use=use), output, as_json)


@jwk.command("from-secret", epilog=EXIT_CODES_HELP)
@click.argument("secret")
@_KID
@click.option("--alg", type=click.Choice([a for a, v in SIGNATURE_ALGORITHMS.items() if v[0] == "oct"]
                                         + [a for a, v in KEY_MANAGEMENT_ALGORITHMS.items() if v[0] == "oct"]),
              help="Bind the key to one algorithm (JWK \"alg\").")
@_USE
@_OUT
@_JSON
@one_line_errors
def from_secret(secret: str, kid: str, alg: str | None, use: str | None, output: str | None,
                as_json: bool) -> None:
    """Make the oct JWK of a shared secret: "k" is the base64url of its UTF-8 bytes.

    This replaces the post's `echo -n fantasticjwt | base64 | tr '+/' '-_' | tr -d '='`.
    SECRET "-" reads it from stdin (one final newline dropped), out of the shell history.

    \b
    Example (the post's key, {"k":"ZmFudGFzdGljand0","kty":"oct","kid":"0001"}):
      jwtgate jwk from-secret fantasticjwt --kid 0001 -o api_secret.jwk
    """
    text = read_argument(secret, "the secret") if secret == "-" else secret
    _emit(jwk_from_secret(text.encode("utf-8"), kid=kid, alg=alg, use=use), output, as_json)


@jwk.command("from-pem", epilog=EXIT_CODES_HELP)
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@_KID
@_ALG
@_USE
@click.option("--password-file", type=click.Path(dir_okay=False, exists=True),
              help="File holding the password of an encrypted private key.")
@_OUT
@_JSON
@one_line_errors
def from_pem(file: str, kid: str, alg: str | None, use: str | None, password_file: str | None,
             output: str | None, as_json: bool) -> None:
    """Convert a PEM key (private, public or an X.509 certificate) to a JWK.

    RSA, EC and Ed25519/Ed448 keys; a private PEM gives a private JWK, a public key or a
    certificate its public JWK. FILE "-" reads stdin.

    \b
    Examples:
      openssl genpkey -algorithm ed25519 -out ed.pem
      jwtgate jwk from-pem ed.pem --kid ed1 -o private.jwk
    """
    data = read_argument(file if file == "-" else "@" + file, "the PEM key", strip_newline=False)
    password = None
    if password_file is not None:
        password = read_argument("@" + password_file, "the password").encode("utf-8")
    _emit(jwk_from_pem(data.encode("utf-8"), kid=kid, alg=alg, use=use, password=password), output, as_json)


@jwk.command("public", epilog=EXIT_CODES_HELP)
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False),
              help="Write the public JWK Set to this file (replaced atomically, mode 0644).")
@one_line_errors
def public(file: str, output: str | None) -> None:
    """Print the public JWK Set of FILE: what to hand to a gateway or a partner.

    Only the public values of RSA, EC and OKP keys are kept, with kid, use, alg, key_ops and
    x5*; oct keys are secrets and are left out (a note says so on stderr). FILE "-" reads stdin.

    \b
    Example:
      jwtgate jwk public private.jwk -o public.jwk
    """
    if file == "-":
        jwks = parse_jwks(read_argument("-", "the JWK Set").encode("utf-8"), "stdin")
    else:
        jwks = read_jwks_file(file)
    keys, notes = public_jwks(jwks, "stdin" if file == "-" else file)
    for note in notes:
        warn(note)
    if output is None:
        click.echo(format_jwks(keys), nl=False)
        return
    if file != "-" and os.path.exists(output) and os.path.samefile(file, output):
        fail(f"{output} is the input file: writing the public set there would destroy its private keys")
    write_jwks_file(output, keys)
    # (as `jwk generate -o` does: a silent success reads like nothing happened)
    kids = ", ".join("-" if k.get("kid") is None else f'"{k["kid"]}"' for k in keys)
    click.echo(f"{output}: wrote {len(keys)} public key(s) (kid {kids})")


@jwk.command("thumbprint", epilog=EXIT_CODES_HELP)
@click.argument("file", default="-", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--kid", help="Only the key with this kid.")
@click.option("--hash", "digest", type=click.Choice(["sha256", "sha384", "sha512"]), default="sha256",
              show_default=True, help="Hash function.")
@click.option("--json", "as_json", is_flag=True, help="Print [{kid, kty, thumbprint}, ...] as JSON.")
@one_line_errors
def thumbprint_cmd(file: str, kid: str | None, digest: str, as_json: bool) -> None:
    """Print the RFC 7638 thumbprint of each key of FILE (a JWK Set or a JWK; stdin by default).

    One key: the thumbprint alone. Several: one "THUMBPRINT KID" line each ("-" for no kid).
    The thumbprint of a public key and of its private key are the same.

    \b
    Examples:
      jwtgate jwk thumbprint public.jwk --kid ec1
      jwtgate jwk public private.jwk | jwtgate jwk thumbprint --json
    """
    if file == "-":
        jwks = parse_jwks(read_argument("-", "the JWK Set").encode("utf-8"), "stdin")
    else:
        jwks = read_jwks_file(file)
    if kid is not None:
        jwks = [j for j in jwks if j.get("kid") == kid]
        if not jwks:
            fail(f'no key with kid "{kid}" in {"stdin" if file == "-" else file}')
    rows = [{"kid": j.get("kid"), "kty": j["kty"], "thumbprint": thumbprint(j, digest)} for j in jwks]
    if as_json:
        echo_json(rows)
    elif len(rows) == 1:
        click.echo(rows[0]["thumbprint"])
    else:
        for row in rows:
            click.echo(f"{row['thumbprint']} {row['kid'] if row['kid'] is not None else '-'}")
