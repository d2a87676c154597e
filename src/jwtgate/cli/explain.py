"""``jwtgate explain``: the gateway's decision for one request, without sending anything.

The dry run is :func:`jwtgate.runtime.explain.explain_request`; this module compiles the
configuration, builds the request from the command line and prints the report.
"""

from __future__ import annotations

import json
import re
import sys
from typing import TYPE_CHECKING

import click

from jwtgate.cli.console import EXIT_FAILED, echo_json, fail, one_line_errors, read_argument

if TYPE_CHECKING:
    from jwtgate.runtime.explain import Explanation

__all__ = ["explain"]

_EPILOG = ("Exit codes: 0 the request would be proxied (or answered by a configured return), "
           "1 the gateway would refuse it (401, 403, 404...) or the configuration or input is "
           "invalid, 2 usage error.")


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        fail(f'invalid header "{text[:60]}": use -H "Name: value"')
    return name.strip(), value.strip()


#: a JWS or JWE in compact serialization (RFC 7515 §7.1, RFC 7516 §7.1) inside a header
#: value: a JOSE header is a JSON object, so its base64url starts "eyJ" ('{"')
_COMPACT = re.compile(r"eyJ[A-Za-z0-9_-]{5,}(?:\.[A-Za-z0-9_-]*){2,4}")


def _redact(text: str) -> str:
    """``text`` with every compact JWS/JWE cut to its first 8 characters: the report is
    made to be pasted into tickets, and a token in it would still be a live credential.
    (``--json`` keeps the exact bytes, for programs.)"""
    return _COMPACT.sub(lambda m: f"{m.group()[:8]}...({len(m.group())} characters, redacted)", text)


def _print(ex: "Explanation") -> None:
    def line(label: str, text: str) -> None:
        click.echo(f"{label:<11}{text}")

    line("request", f"{ex.method} {ex.target} (Host: {ex.host}) from {ex.remote} "
                    f"to {ex.local[0]}:{ex.local[1]}")
    if ex.server:
        line("server", ex.server)
    if ex.location:
        line("location", ex.location)
    for step in ex.steps:
        line("handler", f"{step['handler']}: {step['result']}")
    auth = ex.auth
    if auth is not None:
        line("auth_jwt", f'realm "{auth.realm}", token from {auth.source}')
        if not auth.token_length:
            line("  token", "none presented")
        else:
            alg = (auth.header or {}).get("alg")
            kid = (auth.header or {}).get("kid")
            shown_kid = "none" if kid is None else json.dumps(kid, ensure_ascii=False)
            head = "undecodable header" if auth.header is None else f"alg {alg}, kid {shown_kid}"
            line("  token", f"{auth.token_length} characters, {head}")
            if "enc" in (auth.header or {}):
                line("  keys", "(an encrypted token: the keys tried are not listed)")
            else:
                line("  keys", "; ".join(auth.candidates) or "no key fits this alg and kid")
            if auth.verified_by is not None:
                line("  verdict", f"verified by {auth.verified_by}")
            elif auth.error is not None:
                line("  verdict", f"rejected: {auth.error.code}: {auth.error.detail}")
        for req in auth.requires:
            state = "ok" if req["ok"] else f"FAILS (error={req['code']})"
            line("  require", f'{req["source"]} = "{req["value"]}": {state}')
    for name, value in ex.variables.items():
        line("  variable", f"{name} = {value}")
    for lim in ex.limits:
        key = f'"{lim.key}"' if lim.key else "empty: not counted"
        when = "after auth_jwt" if lim.after_auth else "before auth_jwt"
        burst = f", burst {lim.burst}" + (f", delay {lim.delay}" if lim.delay else "")
        dry = ", dry run" if lim.dry_run else ""
        line("limit_req", f'zone "{lim.zone}" key {key} ({lim.key_source}), {lim.rate}{burst}{dry}, '
                          f"{when}; not counted by explain")
    line("decision", ex.decision)
    for name, value in ex.response_headers:
        line("", f"{name}: {value}")
    for note in ex.notes:
        line("note", note)
    if ex.upstream_head is not None:
        click.echo("upstream request head:")
        for raw in ex.upstream_head.split(b"\r\n")[:-2]:
            click.echo("  " + _redact(raw.decode("utf-8", "backslashreplace")))


@click.command("explain", epilog=_EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-c", "--conf", "conf", required=True, type=click.Path(dir_okay=False),
              help="The configuration file.")
@click.option("--token", metavar="TOKEN|-",
              help='Send "Authorization: Bearer TOKEN"; "-" reads the token from stdin.')
@click.option("-H", "--header", "headers", multiple=True, metavar="'Name: value'",
              help="A request header, as curl -H. Repeatable.")
@click.option("--remote-addr", default="127.0.0.1", show_default=True,
              help="The client address ($remote_addr).")
@click.option("--listen", metavar="ADDR:PORT",
              help="The address the request arrives on (default: from the URL, else the first listen).")
@click.option("--json", "as_json", is_flag=True, help="Print the whole report as JSON.")
@click.argument("method")
@click.argument("url")
@one_line_errors
def explain(conf: str, token: str | None, headers: tuple[str, ...], remote_addr: str,
            listen: str | None, as_json: bool, method: str, url: str) -> None:
    """Explain what the gateway would do with one request, without sending anything.

    Shows the server and location chosen, the token and the key tried, the verdict and its
    reason, the $jwt_* variables, each auth_jwt_require value, the limit_req keys (never
    counted) and the exact request head that would go upstream (with tokens in it cut short;
    --json has the exact bytes). No socket is opened.

    URL is http://HOST[:PORT]/PATH?QUERY (Host is HOST[:PORT], as curl sends it) or /PATH.

    \b
    Examples:
      jwtgate explain -c examples/reference/gateway.conf \\
          --token "$(cat examples/reference/quotes.jwt)" GET http://127.0.0.1:8080/products/widget1
      jwtgate explain -c gateway.conf --token - GET /products/widget1 < quotes.jwt
      jwtgate explain -c gateway.conf -H 'Cookie: jwt=...' --json GET /products/a
    """
    fields = [_header(h) for h in headers]
    if token is not None:
        if any(n.lower() == "authorization" for n, _ in fields):
            fail("give --token or an Authorization header, not both")
        value = read_argument(token, "the token").strip() if token == "-" else token
        fields.append(("Authorization", f"Bearer {value}"))
    from jwtgate.conf.plan import compile_plan
    from jwtgate.runtime.explain import explain_request

    plan = compile_plan(conf)
    for warning in plan.warnings:
        click.echo(f"jwtgate: [warn] {warning}", err=True)
    ex = explain_request(plan, method, url, fields, remote_addr=remote_addr, listen=listen)
    if as_json:
        echo_json(ex.to_dict())
    else:
        _print(ex)
    if ex.refused:
        sys.exit(EXIT_FAILED)
