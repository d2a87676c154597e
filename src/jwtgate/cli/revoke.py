"""``jwtgate revoke`` and ``jwtgate unrevoke``: thin clients of the NGINX Plus keyval API.

``revoke`` adds the token ID (``--jti``) or subject (``--sub``) to a keyval zone through
``POST /api/9/http/keyvals/ZONE`` (and, when the key is already there, ``PATCH`` to re-time
it); ``unrevoke`` removes it with ``PATCH {"KEY": null}`` after ``GET ?key=KEY`` (NGINX Plus
answers that ``PATCH`` with 204 whether or not the key was there; a key that was not there is
said so, exit status 0). They work against jwtgate and against
NGINX Plus alike. ``--until``/``--for`` become the entry's ``expire`` (NGINX Plus API 5+; the
zone needs ``timeout=``): a revocation need not outlive the token's ``exp``.

Default zones: ``revoked`` for ``--jti`` and ``revoked_sub`` for ``--sub``, as configured by::

    keyval_zone zone=revoked:1m state=/var/lib/jwtgate/revoked.json timeout=1d;
    keyval $jwt_claim_jti $jwt_revoked zone=revoked;
    keyval_zone zone=revoked_sub:1m state=/var/lib/jwtgate/revoked_sub.json timeout=1d;
    keyval $jwt_claim_sub $sub_revoked zone=revoked_sub;
"""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.request
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlsplit

import click

from jwtgate.cli.console import EXIT_CODES_HELP, fail, one_line_errors
from jwtgate.conf.values import parse_time

__all__ = ["revoke", "unrevoke", "DEFAULT_ZONES", "API_VERSION"]

#: The zone each key kind goes to unless ``--zone`` says otherwise.
DEFAULT_ZONES = {"jti": "revoked", "sub": "revoked_sub"}
#: The API version used when ``--api`` names the location only (``http://host/api``).
API_VERSION = 9
#: Seconds one API call may take.
TIMEOUT = 10.0
#: Most bytes of an API answer read.
MAX_ANSWER = 1 << 20
#: The value stored for a revoked key (any non-empty value revokes).
REVOKED_VALUE = "1"

_EPILOG = f"""\b
Examples:
  jwtgate revoke --api http://127.0.0.1:8080/api --jti 5f2b0c1e --for 1h
  jwtgate revoke --api http://127.0.0.1:8080/api --sub quotes --until 2030-01-01T00:00:00Z
  jwtgate unrevoke --api http://127.0.0.1:8080/api --jti 5f2b0c1e
\b
Zones: --jti uses "revoked", --sub uses "revoked_sub" unless --zone is given.
{EXIT_CODES_HELP}"""


def _zone_url(api: str, zone: str) -> str:
    try:
        parts = urlsplit(api)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:  # "http://[::1" (an unclosed IPv6 address), "http://h:x/api"
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        fail(f'--api must be an http:// or https:// URL, not "{api[:200]}"')
    base = api.rstrip("/")
    last = base.rsplit("/", 1)[-1]
    if not (last.isdigit() and parts.path.strip("/")):
        base += f"/{API_VERSION}"
    return f"{base}/http/keyvals/{quote(zone, safe='')}"


def _headers(values: tuple[str, ...]) -> dict[str, str]:
    out = {"Content-Type": "application/json", "Accept": "application/json"}
    for value in values:
        name, sep, text = value.partition(":")
        name = name.strip()
        if not sep or not name or any(c in name for c in " \t\r\n") or "\n" in text or "\r" in text:
            fail("--header must be 'Name: value' on one line")  # never echo the value (a token)
        out[name] = text.strip()
    return out


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects are answers, not followed: urllib would replay the request's headers (an
    ``Authorization`` given with ``-H``) to wherever the ``Location`` points, and turn a
    ``POST`` into a ``GET``. The NGINX Plus API never redirects."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> None:
        return None  # urllib then raises HTTPError with the 3xx status


_OPENER = urllib.request.build_opener(_NoRedirect)


def _call(method: str, url: str, body: Any, headers: dict[str, str]) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with _OPENER.open(req, timeout=TIMEOUT) as r:  # noqa: S310 - the operator's URL
            return r.status, r.read(MAX_ANSWER)
    except urllib.error.HTTPError as e:
        try:
            answer = e.read(MAX_ANSWER)
        except OSError:
            answer = b""
        return e.code, answer
    except urllib.error.URLError as e:
        fail(f"cannot reach the API at {url}: {e.reason}")
    except (OSError, ValueError) as e:  # timeouts, a bad URL
        fail(f"cannot reach the API at {url}: {e}")


def _error_code(answer: bytes) -> str | None:
    """The ``code`` of an NGINX Plus API error object (``KeyvalKeyNotFound``...), or ``None``
    when ``answer`` is not one."""
    try:
        code = json.loads(answer.decode("utf-8"))["error"]["code"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None
    return code if isinstance(code, str) else None


def _explain(status: int, answer: bytes, api: str) -> str:
    """``405 MethodDisabled: method disabled`` from an NGINX Plus error object, or the status,
    with a hint at the usual cause (``api`` is the ``--api`` value as given)."""
    try:
        err = json.loads(answer.decode("utf-8"))["error"]
        text = f"{status} {err['code']}: {err['text']}"
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        text = f"{status}"
        if status in (404, 405):  # not the API answering: a location without "api", or no path
            text += (f' (no NGINX Plus API at {api[:200]}: --api must be the URL of the "api" '
                     'location, e.g. http://host/api)')
    hints = {"MethodDisabled": ' (the api location needs "api write=on;")',
             "KeyvalNotFound": " (no keyval_zone of that name; see --zone)",
             "UnknownVersion": " (--api should be the api location, e.g. http://host/api)"}
    for code, hint in hints.items():
        if code in text:
            text += hint
    if status in (401, 403) and "error" not in text:
        text += " (the api location refused the request; see --header)"
    if 300 <= status < 400:
        text += " (a redirect, not followed: give the api location itself as --api)"
    return text[:500]


def _expire_ms(until: str | None, duration: str | None) -> int | None:
    if until is not None and duration is not None:
        fail("give --until or --for, not both")
    if duration is not None:
        try:
            seconds = parse_time(duration, kind="msec")
        except ValueError:
            fail(f'invalid --for "{duration[:64]}" (e.g. 30m, 1h, 7d)')
        if seconds <= 0:
            fail("--for must be longer than 0")
        return int(seconds * 1000)
    if until is None:
        return None
    if until.isascii() and until.isdigit():  # str.isdigit() is also true of "²" and "١٢٣"
        stamp = float(until)
    else:
        try:
            stamp = datetime.fromisoformat(until.replace("Z", "+00:00")).timestamp()
        except ValueError:
            fail(f'invalid --until "{until[:64]}": a Unix time (a token\'s exp) or an ISO 8601 time')
    left = stamp - time.time()
    if left <= 0:
        fail(f"--until {until[:64]} has already passed")
    return math.ceil(left * 1000)


def _key(jti: str | None, sub: str | None) -> tuple[str, str]:
    if (jti is None) == (sub is None):
        raise click.UsageError("give exactly one of --jti and --sub")
    kind, key = ("jti", jti) if jti is not None else ("sub", sub)
    if not key:
        fail(f"--{kind} must not be empty")
    return kind, key  # type: ignore[return-value]


_api = click.option("--api", "api", required=True, metavar="URL",
                    help="The NGINX Plus API location, e.g. http://127.0.0.1:8080/api (or .../api/9).")
_jti = click.option("--jti", metavar="ID", help='The token ID (the "jti" claim) to revoke.')
_sub = click.option("--sub", metavar="SUB", help='The subject (the "sub" claim) to revoke.')
_zone = click.option("--zone", metavar="NAME", help='The keyval zone (default "revoked" for --jti, '
                                                     '"revoked_sub" for --sub).')
_header = click.option("-H", "--header", "headers", multiple=True, metavar="'Name: value'",
                       help="A header for the API request, e.g. 'Authorization: Bearer ...' (repeatable).")


@click.command("revoke", epilog=_EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@_api
@_jti
@_sub
@_zone
@click.option("--until", metavar="EXP", help="Until this time: Unix seconds (the token's exp) or ISO 8601.")
@click.option("--for", "duration", metavar="TIME", help="For this long: 30m, 1h, 7d (NGINX time syntax).")
@_header
@one_line_errors
def revoke(api: str, jti: str | None, sub: str | None, zone: str | None, until: str | None,
           duration: str | None, headers: tuple[str, ...]) -> None:
    """Revoke a token (--jti) or a client (--sub) through the gateway's API.

    Adds the key to the keyval zone that `auth_jwt_require` checks; the next request with a
    matching token is refused, on every worker (and, with `sync`, on every instance).
    """
    kind, key = _key(jti, sub)
    zone = zone or DEFAULT_ZONES[kind]
    expire = _expire_ms(until, duration)
    url = _zone_url(api, zone)
    hdrs = _headers(headers)
    item: Any = REVOKED_VALUE if expire is None else {"value": REVOKED_VALUE, "expire": expire}
    status, answer = _call("POST", url, {key: item}, hdrs)
    if status == 409:  # already revoked: set it again (new expiry)
        status, answer = _call("PATCH", url, {key: item}, hdrs)
    if status not in (201, 204):
        fail(f"the API refused the revocation: {_explain(status, answer, api)}")
    until_text = ""
    if expire is not None:
        until_text = time.strftime(" until %Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + expire / 1000))
    click.echo(f'revoked {kind} "{key}" in zone "{zone}"{until_text}')
    if expire is None:
        click.echo("jwtgate: note: without --until or --for the revocation lasts for the zone's timeout= "
                   "(until unrevoked when it has none); --until <the token's exp> makes it last exactly "
                   "as long as the token", err=True)


@click.command("unrevoke", epilog=_EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@_api
@_jti
@_sub
@_zone
@_header
@one_line_errors
def unrevoke(api: str, jti: str | None, sub: str | None, zone: str | None, headers: tuple[str, ...]) -> None:
    """Lift a revocation made with `jwtgate revoke` (removes the key from the zone).

    A key that is not in the zone (never revoked, already lifted, or expired) is not an error:
    it says so and exits 0, as the key is not revoked, which is what was asked.
    """
    kind, key = _key(jti, sub)
    zone = zone or DEFAULT_ZONES[kind]
    url = _zone_url(api, zone)
    hdrs = _headers(headers)
    # NGINX Plus answers PATCH {"key": null} with 204 whether or not the key was there: ask
    # first. The PATCH is sent either way (it is idempotent), so the key is gone afterwards
    # even if it was added meanwhile.
    status, answer = _call("GET", f"{url}?key={quote(key, safe='')}", None, hdrs)
    code = _error_code(answer)
    if status == 404 and code is None:
        fail(f"the API refused it: {_explain(status, answer, api)}")
    absent = status == 404 and code == "KeyvalKeyNotFound"
    status, answer = _call("PATCH", url, {key: None}, hdrs)
    if status not in (200, 204):
        fail(f"the API refused it: {_explain(status, answer, api)}")
    if absent:
        click.echo(f'{kind} "{key}" was not revoked in zone "{zone}": nothing to remove')
    else:
        click.echo(f'unrevoked {kind} "{key}" in zone "{zone}"')
