"""The ``jwtgate`` command line: the only place that prints or exits.

``jwtgate run -c FILE`` serves in the foreground; ``jwtgate check -c FILE`` tests a
configuration like ``nginx -t``. Errors are one line each and a non-zero exit code, never a
traceback.
"""

from __future__ import annotations

import sys

import click

from jwtgate import __version__
from jwtgate.errors import ConfigError

__all__ = ["main", "cli"]

EXIT_CONFIG = 1


def _print_errors(err: ConfigError) -> None:
    errors = getattr(err, "errors", None) or [err]
    for e in errors:
        click.echo(f"jwtgate: [emerg] {e}", err=True)


def _compile(conf: str) -> object:
    from jwtgate.conf.plan import compile_plan

    return compile_plan(conf)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-v", "--version", prog_name="jwtgate")
def cli() -> None:
    """jwtgate: an API gateway that authenticates clients with JSON Web Tokens.

    Configuration is NGINX syntax; authentication follows NGINX Plus auth_jwt.

    \b
    Examples:
      jwtgate check -c examples/reference/gateway.conf
      jwtgate run -c examples/reference/gateway.conf
    """


@cli.command()
@click.option("-c", "--conf", "conf", required=True, type=click.Path(dir_okay=False),
              help="The configuration file.")
def run(conf: str) -> None:
    """Run the gateway in the foreground until SIGTERM or SIGINT.

    Logs go to stderr unless error_log says otherwise.

    \b
    Signals: HUP reloads the configuration, QUIT stops gracefully,
    TERM/INT stop at once, USR1 reopens the log files.

    \b
    Example:
      jwtgate run -c examples/reference/gateway.conf
    """
    from jwtgate.process.gateway import BindError
    from jwtgate.process.gateway import run as run_gateway

    try:
        plan = _compile(conf)
    except ConfigError as e:
        _print_errors(e)
        sys.exit(EXIT_CONFIG)
    try:
        run_gateway(conf, plan)  # type: ignore[arg-type]
    except BindError as e:
        click.echo(f"jwtgate: [emerg] {e}", err=True)
        sys.exit(EXIT_CONFIG)
    except OSError as e:
        click.echo(f"jwtgate: [emerg] {e.strerror or e}: {getattr(e, 'filename', '') or ''}", err=True)
        sys.exit(EXIT_CONFIG)
    except KeyboardInterrupt:  # pragma: no cover - SIGINT before the loop installed its handler
        pass


@cli.command()
@click.option("-c", "--conf", "conf", required=True, type=click.Path(dir_okay=False),
              help="The configuration file to test.")
@click.option("--dump", is_flag=True, help="Also print the configuration as loaded (like nginx -T).")
def check(conf: str, dump: bool) -> None:
    """Test a configuration file, like "nginx -t".

    Exits 0 with "configuration file FILE test is successful", or 1 with each error as
    "[emerg] MESSAGE in FILE:LINE".

    \b
    Example:
      jwtgate check -c examples/reference/gateway.conf
    """
    try:
        plan = _compile(conf)
    except ConfigError as e:
        _print_errors(e)
        click.echo(f"jwtgate: configuration file {conf} test failed", err=True)
        sys.exit(EXIT_CONFIG)
    for warning in getattr(plan, "warnings", []):
        click.echo(f"jwtgate: [warn] {warning}", err=True)
    click.echo(f"jwtgate: the configuration file {conf} syntax is ok", err=True)
    click.echo(f"jwtgate: configuration file {conf} test is successful", err=True)
    if dump:
        from jwtgate.conf.loader import dump as dump_conf

        click.echo(dump_conf(conf), nl=False)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="jwtgate")


if __name__ == "__main__":
    main()
