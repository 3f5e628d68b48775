"""Command line: the life of containers after ``run`` — logs, exec, stop, kill, wait.

``register(group)`` adds them to the ``rootless`` group.  Engine modules are imported inside
the commands.
"""

from __future__ import annotations

import sys

import click

CONTEXT = {"help_option_names": ["--help"], "max_content_width": 100}


def _store(ctx: click.Context):
    from .paths import store_root
    from .store import Store
    return Store(store_root(ctx.obj["root"]))


@click.command(context_settings=CONTEXT)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new output until the container ends.")
@click.option("--tail", metavar="N", help="Only the last N lines (or 'all').")
@click.option("-t", "--timestamps", is_flag=True, help="Show each line's time.")
@click.option("--since", metavar="SECONDS|TIMESTAMP", help="Only lines newer than this (seconds ago, or RFC 3339).")
@click.argument("container")
@click.pass_context
def logs(ctx, container, follow, tail, timestamps, since) -> None:
    """Print what a detached container wrote to stdout and stderr."""
    import time
    from .errors import UsageError
    from .lifecycle import logs as show
    n = None
    if tail not in (None, "all"):
        if not tail.isdigit():
            raise UsageError(f"invalid --tail '{tail}': use a number or 'all'")
        n = int(tail)
    cutoff = None
    if since:
        if since.replace(".", "", 1).isdigit():
            cutoff = time.time() - float(since)
        else:
            import datetime
            try:
                cutoff = datetime.datetime.fromisoformat(since.replace("Z", "+00:00")).timestamp()
            except ValueError:
                raise UsageError(f"invalid --since '{since}': use seconds or an RFC 3339 time") from None
    show(_store(ctx), container, follow, n, timestamps, cutoff)


@click.command("exec", context_settings={**CONTEXT, "allow_interspersed_args": False})
@click.option("-i", "--interactive", is_flag=True, help="Keep stdin open.")
@click.option("-t", "--tty", is_flag=True, help="Give the command a pseudo-terminal.")
@click.option("-e", "--env", multiple=True, metavar="KEY[=VALUE]", help="Set an environment variable.")
@click.option("-u", "--user", metavar="USER[:GROUP]", help="Run as this user (default: the container's).")
@click.option("-w", "--workdir", metavar="DIR", help="Working directory (default: the container's).")
@click.argument("container")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def exec_(ctx, container, command, interactive, tty, env, user, workdir) -> None:
    """Run COMMAND in a running container."""
    from .lifecycle import exec_in
    sys.exit(exec_in(_store(ctx), container, list(command), interactive, tty, list(env), user, workdir))


@click.command(context_settings=CONTEXT)
@click.option("-t", "--time", "grace", default=10.0, show_default=True, metavar="SECONDS",
              help="Seconds to wait before SIGKILL.")
@click.option("-s", "--signal", "sig", metavar="SIGNAL", help="Stop signal (default: the image's, or TERM).")
@click.argument("containers", nargs=-1, required=True)
@click.pass_context
def stop(ctx, containers, grace, sig) -> None:
    """Stop running containers: the stop signal, then SIGKILL after the grace period."""
    from .lifecycle import stop as do_stop
    for key in containers:
        do_stop(_store(ctx), key, grace, sig)
        click.echo(key)


@click.command(context_settings=CONTEXT)
@click.option("-s", "--signal", "sig", default="KILL", show_default=True, help="Signal to send.")
@click.argument("containers", nargs=-1, required=True)
@click.pass_context
def kill(ctx, containers, sig) -> None:
    """Send a signal to the main process of running containers."""
    from .lifecycle import kill as do_kill, parse_signal
    for key in containers:
        do_kill(_store(ctx), key, parse_signal(sig))
        click.echo(key)


@click.command(context_settings=CONTEXT)
@click.argument("containers", nargs=-1, required=True)
@click.pass_context
def wait(ctx, containers) -> None:
    """Wait for containers to end; print their exit codes."""
    from .lifecycle import wait_exit
    for key in containers:
        click.echo(wait_exit(_store(ctx), key))


def register(group: click.Group) -> None:
    for command in (logs, exec_, stop, kill, wait):
        group.add_command(command)
