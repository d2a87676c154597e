"""The ``jwtgate`` command line: the only place that prints or exits.

``jwtgate run -c FILE`` serves in the foreground; ``jwtgate check -c FILE`` tests a
configuration like ``nginx -t``. Errors are one line each and a non-zero exit code, never a
traceback. The tool commands ``jwk``, ``token`` and ``explain`` live in their own modules.
"""

from __future__ import annotations

import sys

import click

from jwtgate import __version__
from jwtgate.cli.explain import explain
from jwtgate.cli.jwk import jwk
from jwtgate.cli.revoke import revoke, unrevoke
from jwtgate.cli.token import token
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


#: ``jwtgate -s NAME``: NGINX's signal names.
SIGNALS = {"stop": "SIGTERM", "quit": "SIGQUIT", "reload": "SIGHUP", "reopen": "SIGUSR1"}


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, invoke_without_command=True,
             no_args_is_help=True)
@click.version_option(__version__, "-v", "--version", prog_name="jwtgate")
@click.option("-s", "signal_name", type=click.Choice(list(SIGNALS)), metavar="SIGNAL",
              help="Send SIGNAL (stop, quit, reload, reopen) to the gateway whose pid file the "
                   "configuration given with -c names, like nginx -s.")
@click.option("-c", "--conf", "conf", type=click.Path(dir_okay=False),
              help="With -s: the running gateway's configuration file.")
@click.pass_context
def cli(ctx: click.Context, signal_name: str | None, conf: str | None) -> None:
    """jwtgate: an API gateway that authenticates clients with JSON Web Tokens.

    Configuration is NGINX syntax; authentication follows NGINX Plus auth_jwt.

    \b
    Examples:
      jwtgate check -c examples/reference/gateway.conf
      jwtgate run -c examples/reference/gateway.conf
      jwtgate -s reopen -c examples/reference/gateway.conf   (after rotating logs)
    """
    if signal_name is None:
        if conf is not None:
            raise click.UsageError("-c without -s: give -c after the command (jwtgate run -c FILE)")
        return
    if ctx.invoked_subcommand is not None:
        raise click.UsageError("-s is not combined with a command")
    if conf is None:
        raise click.UsageError("-s needs -c FILE (the configuration names the pid file)")
    _send_signal(signal_name, conf)


def _send_signal(name: str, conf: str) -> None:
    """``jwtgate -s NAME -c FILE``: signal the process whose PID the ``pid`` file holds."""
    import os
    import signal

    try:
        plan = _compile(conf)
    except ConfigError as e:
        _print_errors(e)
        sys.exit(EXIT_CONFIG)
    pid_path = getattr(plan, "pid", None)
    if not pid_path:
        click.echo(f'jwtgate: [error] {conf} has no "pid" directive, so the running gateway '
                   "cannot be found", err=True)
        sys.exit(EXIT_CONFIG)
    try:
        with open(pid_path, encoding="ascii") as f:
            text = f.read().strip()
    except OSError as e:
        click.echo(f'jwtgate: [error] open() "{pid_path}" failed ({e.errno}: {e.strerror})', err=True)
        sys.exit(EXIT_CONFIG)
    if not text.isdigit() or int(text) <= 0:
        click.echo(f'jwtgate: [error] invalid PID number "{text}" in "{pid_path}"', err=True)
        sys.exit(EXIT_CONFIG)
    sig = getattr(signal, SIGNALS[name])
    try:
        os.kill(int(text), sig)
    except OSError as e:
        click.echo(f"jwtgate: [alert] kill({text}, {int(sig)}) failed ({e.errno}: {e.strerror})", err=True)
        sys.exit(EXIT_CONFIG)


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
    from jwtgate.process.runtime import setup_runtime_dir

    setup_runtime_dir()  # first: prometheus_client reads its directory at import
    from jwtgate.process.gateway import BindError
    from jwtgate.process.master import run_gateway

    try:
        plan = _compile(conf)
    except ConfigError as e:
        _print_errors(e)
        sys.exit(EXIT_CONFIG)
    try:
        status = run_gateway(conf, plan)  # type: ignore[arg-type]
    except BindError as e:
        click.echo(f"jwtgate: [emerg] {e}", err=True)
        sys.exit(EXIT_CONFIG)
    except OSError as e:
        click.echo(f"jwtgate: [emerg] {e.strerror or e}: {getattr(e, 'filename', '') or ''}", err=True)
        sys.exit(EXIT_CONFIG)
    except KeyboardInterrupt:  # pragma: no cover - SIGINT before the loop installed its handler
        status = 0
    if status:
        sys.exit(status)


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


cli.add_command(jwk)
cli.add_command(token)
cli.add_command(explain)
cli.add_command(revoke)
cli.add_command(unrevoke)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="jwtgate")


if __name__ == "__main__":
    main()
