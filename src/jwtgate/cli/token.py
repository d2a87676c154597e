"""``jwtgate token``: sign and inspect JWTs.

The work is done by :mod:`jwtgate.jose.issue` (signing, encryption) and
:mod:`jwtgate.jose.inspect` (decoding, verification with the gateway's own verifier). Tokens
are credentials: ``inspect`` reads them from stdin by default (out of the shell history) and
never prints one back, and ``sign -o`` writes them with mode 0600.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from jwtgate.cli.console import (
    EXIT_CODES_HELP,
    EXIT_FAILED,
    echo_json,
    fail,
    one_line_errors,
    read_argument,
)
from jwtgate.clock import SYSTEM_CLOCK
from jwtgate.conf.values import parse_time
from jwtgate.jose.inspect import Inspection, inspect_token, time_claims
from jwtgate.jose.issue import (
    TokenSpec,
    issue_token,
    parse_claim_option,
    write_file_atomic,
)
from jwtgate.jose.keygen import CONTENT_ENCRYPTION_ALGORITHMS, KEY_MANAGEMENT_ALGORITHMS
from jwtgate.jose.keys import SUPPORTED_ALGORITHMS

__all__ = ["token"]

#: Longest token read from stdin, characters (the gateway's default limit is 16 KiB).
MAX_TOKEN = 64 * 1024


@click.group("token", context_settings={"help_option_names": ["-h", "--help"]})
def token() -> None:
    """Sign and inspect JSON Web Tokens.

    \b
    Examples:
      jwtgate token sign --key api_secret.jwk --claim name="Quotation System" \\
          --sub quotes --iss "My API Gateway" -o quotes.jwt
      jwtgate token inspect --key api_secret.jwk < quotes.jwt
    """


@token.command("sign", epilog=EXIT_CODES_HELP)
@click.option("--key", type=click.Path(dir_okay=False), help="JWK Set file with the private signing key.")
@click.option("--kid", help="Sign with the key that has this kid (needed when several keys can sign).")
@click.option("--alg", type=click.Choice(sorted(SUPPORTED_ALGORITHMS)),
              help="Signature algorithm (default: the key's alg, else HS256/RS256/ES*/EdDSA by key type).")
@click.option("--claim", "claims", multiple=True, metavar="NAME=VALUE",
              help="A claim: NAME=VALUE for a string, NAME:=JSON for any JSON value. Repeatable.")
@click.option("--claims-json", metavar="JSON|@FILE|-",
              help="The claims as a JSON object; used byte for byte when no other claim is given.")
@click.option("--header-json", metavar="JSON|@FILE",
              help='The whole JWS header, used byte for byte; it must hold "alg".')
@click.option("--sub", help="Subject claim.")
@click.option("--iss", help="Issuer claim.")
@click.option("--aud", multiple=True, help="Audience claim; several make an array.")
@click.option("--exp", metavar="TIME",
              help="Expiry: a duration from now (1h, 30m, 1d), @SECONDS, or an ISO 8601 date-time.")
@click.option("--nbf", metavar="TIME", help="Not before: as --exp (now, -5m, @SECONDS...).")
@click.option("--iat", is_flag=True, help="Add iat, the time of issue (now).")
@click.option("--jti", metavar="ID|auto", help="Token ID; \"auto\" makes a random one.")
@click.option("--type", "kind", type=click.Choice(["signed", "nested", "encrypted"]),
              help="signed (default), nested (a JWS inside a JWE; the default with --encrypt-to) "
                   "or encrypted (the claims in a JWE, unsigned).")
@click.option("--encrypt-to", type=click.Path(dir_okay=False),
              help="JWK Set file with the recipient's encryption key (RSA public key or oct key).")
@click.option("--enc-kid", help="Encrypt to the key with this kid.")
@click.option("--enc-alg", type=click.Choice(list(KEY_MANAGEMENT_ALGORITHMS)),
              help="Key management algorithm (default RSA-OAEP-256 for RSA, AxxxKW for oct).")
@click.option("--enc", type=click.Choice(list(CONTENT_ENCRYPTION_ALGORITHMS)), default="A256GCM",
              show_default=True, help="Content encryption algorithm.")
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Write the token to this file (mode 0600) instead of stdout.")
@click.option("--json", "as_json", is_flag=True, help="Print {token, type, header, claims, kid, alg} as JSON.")
@one_line_errors
def sign(key: str | None, kid: str | None, alg: str | None, claims: tuple[str, ...],
         claims_json: str | None, header_json: str | None, sub: str | None, iss: str | None,
         aud: tuple[str, ...], exp: str | None, nbf: str | None, iat: bool, jti: str | None,
         kind: str | None, encrypt_to: str | None, enc_kid: str | None, enc_alg: str | None,
         enc: str, output: str | None, as_json: bool) -> None:
    """Make a compact JWS (or, with --encrypt-to, a JWE) and print it.

    The header is {"typ":"JWT","alg":ALG,"kid":KID}; the claims are --claims-json's members,
    then the --claim values, then --sub, --iss, --aud, --exp, --nbf, --iat, --jti, all as
    compact JSON. With --header-json and --claims-json alone, their bytes are signed as given.

    \b
    Examples (both make the post's token exactly):
      jwtgate token sign --key api_secret.jwk --claim name="Quotation System" \\
          --sub quotes --iss "My API Gateway"
      jwtgate token sign --key api_secret.jwk \\
          --header-json '{"typ":"JWT","alg":"HS256","kid":"0001"}' \\
          --claims-json '{"name":"Quotation System","sub":"quotes","iss":"My API Gateway"}'
    \b
    A nested JWT for a recipient's RSA key, valid for one hour:
      jwtgate token sign --key private.jwk --sub quotes --exp 1h --encrypt-to recipient.jwk
    """
    spec = TokenSpec(
        key=key, kid=kid, alg=alg,
        header_json=read_argument(header_json, "--header-json") if header_json is not None else None,
        claims_json=read_argument(claims_json, "--claims-json") if claims_json is not None else None,
        claims=[parse_claim_option(c) for c in claims], sub=sub, iss=iss, aud=aud, exp=exp, nbf=nbf,
        iat=iat, jti=jti, type=kind, encrypt_to=encrypt_to, enc_kid=enc_kid, enc_alg=enc_alg, enc=enc)
    issued = issue_token(spec)
    if output is not None:
        write_file_atomic(output, (issued.token + "\n").encode("ascii"), 0o600)
    if as_json:
        signer = issued.signer
        echo_json({"token": issued.token, "type": issued.type, "header": issued.header,
                   "claims": issued.claims, "kid": signer.kid if signer else None,
                   "alg": signer.alg if signer else None,
                   "encrypted_to": issued.recipient.kid if issued.recipient else None})
    elif output is None:
        click.echo(issued.token)


def _read_token(value: str) -> str:
    if value != "-":
        return value
    data = sys.stdin.read(MAX_TOKEN + 1)
    if len(data) > MAX_TOKEN:
        fail(f"the token on stdin is longer than {MAX_TOKEN} characters")
    text = data.strip()
    if not text:
        fail("no token: give TOKEN or pipe one in on stdin")
    return text


def _json_text(obj: Any, indent: str) -> str:
    text = json.dumps(obj, indent=2, ensure_ascii=False)
    return text.replace("\n", "\n" + indent)


def _print_inspection(ins: Inspection, now: float, indent: str = "") -> None:
    def line(label: str, text: str) -> None:
        # A token may hold an unpaired surrogate escape: show it escaped, never crash on it.
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
        click.echo(f"{indent}{label + ':':<11}{text}")

    kinds = {"JWS": "JWS (signed)", "JWE": "JWE (encrypted)"}
    line("type", f"{kinds[ins.kind]}, {ins.length} characters")
    line("header", json.dumps(ins.header, ensure_ascii=False))
    if ins.claims is not None:
        line("claims", _json_text(ins.claims, indent + " " * 11))
    elif ins.note and ins.inner is None:
        line("claims", f"({ins.note}{': give --key with the decryption key' if ins.verified is None else ''})")
    for t in time_claims(ins.claims or {}, now):
        line(t["claim"], f"{t['value']} = {t['utc']} ({t['relative']})")
    checked = "decrypted" if ins.kind == "JWE" else "verified"
    if ins.verified is None:
        line(checked, "not checked (give --key FILE)")
    elif ins.verified:
        line(checked, f"yes, by {ins.key}")
    else:
        assert ins.error is not None
        line(checked, f"NO: {ins.error.code}: {ins.error.detail}")
    if ins.inner is not None:
        click.echo(f"{indent}inner JWT:")
        _print_inspection(ins.inner, now, indent + "  ")


@token.command("inspect", epilog=EXIT_CODES_HELP + " With --key, 1 also when the token is refused.")
@click.argument("token_arg", metavar="[TOKEN|-]", default="-")
@click.option("--key", "keys", multiple=True, type=click.Path(dir_okay=False),
              help="Verify (JWS) or decrypt (JWE) with the keys of this JWK Set file. Repeatable.")
@click.option("--leeway", default="0", show_default=True,
              help="Clock skew allowed for exp and nbf (auth_jwt_leeway), e.g. 30s.")
@click.option("--json", "as_json", is_flag=True,
              help="Print {type, header, claims, times, verified, key, error, inner} as JSON.")
@one_line_errors
def inspect(token_arg: str, keys: tuple[str, ...], leeway: str, as_json: bool) -> None:
    """Show a token's header and claims (times also in UTC), without verifying it.

    With --key FILE it is verified as the gateway verifies it (signature with the keys of
    FILE, exp and nbf): the output says which key verified it, or the exact reason it is
    refused. The token is read from stdin by default, so it stays out of the shell history;
    it is never printed back.

    \b
    Examples:
      jwtgate token inspect < quotes.jwt
      jwtgate token inspect --key conf/api_secret.jwk < quotes.jwt
      pbpaste | jwtgate token inspect --json -
    """
    try:
        leeway_s = parse_time(leeway, kind="sec")
    except ValueError:
        fail(f'invalid --leeway "{leeway}"')
    now = SYSTEM_CLOCK.wall()
    ins = inspect_token(_read_token(token_arg), keys, leeway=leeway_s)
    if as_json:
        echo_json(ins.to_dict(now))
    else:
        _print_inspection(ins, now)
    if not ins.ok:
        sys.exit(EXIT_FAILED)
