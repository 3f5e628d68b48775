"""Command line: the life of containers after ``run`` — logs, exec, stop, kill, wait.

``register(group)`` adds them to the ``rootless`` group.  Engine modules are imported inside
the commands.
"""

from __future__ import annotations

import sys

import click

from .common import CONTEXT, complete_containers, store as _store


@click.command(context_settings=CONTEXT)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new output until the container ends.")
@click.option("--tail", metavar="N", help="Only the last N lines (or 'all').")
@click.option("-t", "--timestamps", is_flag=True, help="Show each line's time.")
@click.option("--since", metavar="SECONDS|TIMESTAMP", help="Only lines newer than this (seconds ago, or RFC 3339).")
@click.argument("container", shell_complete=complete_containers)
@click.pass_context
def logs(ctx, container, follow, tail, timestamps, since) -> None:
    """Print what a detached container wrote to stdout and stderr."""
    import time
    from ..errors import UsageError
    from ..container.lifecycle import logs as show
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
    for line in show(_store(ctx), container, follow, n, cutoff):
        _print_line(line, timestamps)


def _print_line(line, timestamps: bool = False) -> None:
    """One line of a container's output, on our stdout or stderr as the container wrote it."""
    out = sys.stdout if line.stream == "stdout" else sys.stderr
    out.write((line.time + " " if timestamps else "") + line.text)
    out.flush()


@click.command("exec", context_settings={**CONTEXT, "allow_interspersed_args": False})
@click.option("-i", "--interactive", is_flag=True, help="Keep stdin open.")
@click.option("-t", "--tty", is_flag=True, help="Give the command a pseudo-terminal.")
@click.option("-e", "--env", multiple=True, metavar="KEY[=VALUE]", help="Set an environment variable.")
@click.option("-u", "--user", metavar="USER[:GROUP]", help="Run as this user (default: the container's).")
@click.option("-w", "--workdir", metavar="DIR", help="Working directory (default: the container's).")
@click.option("--privileged", is_flag=True, help="All capabilities of the user namespace, no seccomp filter.")
@click.option("--preserve-fds", type=int, default=0, metavar="N",
              help="Pass file descriptors 3 to 3+N-1 to the command (none others are passed).")
@click.argument("container", shell_complete=complete_containers)
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def exec_(ctx, container, command, interactive, tty, env, user, workdir, privileged, preserve_fds) -> None:
    """Run COMMAND in a running container."""
    from ..container.lifecycle import exec_in
    sys.exit(exec_in(_store(ctx), container, list(command), interactive, tty, list(env), user, workdir,
                     privileged=privileged, preserve_fds=preserve_fds))


@click.command(context_settings=CONTEXT)
@click.option("-t", "--time", "grace", default=10.0, show_default=True, metavar="SECONDS",
              help="Seconds to wait before SIGKILL.")
@click.option("-s", "--signal", "sig", metavar="SIGNAL", help="Stop signal (default: the image's, or TERM).")
@click.argument("containers", nargs=-1, required=True, shell_complete=complete_containers)
@click.pass_context
def stop(ctx, containers, grace, sig) -> None:
    """Stop running containers: the stop signal, then SIGKILL after the grace period."""
    from ..container.lifecycle import stop as do_stop
    for key in containers:
        do_stop(_store(ctx), key, grace, sig)
        click.echo(key)


@click.command(context_settings=CONTEXT)
@click.option("-s", "--signal", "sig", default="KILL", show_default=True, help="Signal to send.")
@click.argument("containers", nargs=-1, required=True, shell_complete=complete_containers)
@click.pass_context
def kill(ctx, containers, sig) -> None:
    """Send a signal to the main process of running containers."""
    from ..container.lifecycle import kill as do_kill
    from ..container.procs import parse_signal
    for key in containers:
        do_kill(_store(ctx), key, parse_signal(sig))
        click.echo(key)


@click.command(context_settings=CONTEXT)
@click.argument("containers", nargs=-1, required=True, shell_complete=complete_containers)
@click.pass_context
def wait(ctx, containers) -> None:
    """Wait for containers to end; print their exit codes."""
    from ..container.lifecycle import wait_exit
    for key in containers:
        click.echo(wait_exit(_store(ctx), key))


@click.command(context_settings=CONTEXT)
@click.option("-a", "--attach", is_flag=True,
              help="Run the container in the foreground, as 'run' does (one container): its output "
                   "and exit status are yours.")
@click.option("-i", "--interactive", is_flag=True,
              help="With -a: your input goes to the container too (one created with -i or -t).")
@click.argument("containers", nargs=-1, required=True, shell_complete=complete_containers)
@click.pass_context
def start(ctx, containers, attach, interactive) -> None:
    """Start created or exited containers (detached; their files are kept)."""
    from ..errors import UsageError
    from ..container.lifecycle import start as do_start, start_attached
    if interactive and not attach:
        raise UsageError("start -i goes with -a: rootless start -ai CONTAINER")
    if attach:
        if len(containers) != 1:
            raise UsageError("start -a follows one container: give one (or start them without -a)")
        sys.exit(start_attached(_store(ctx), containers[0], interactive,
                                lambda w: click.echo(f"rootless: warning: {w}", err=True), _print_line))
    for key in containers:
        do_start(_store(ctx), key)
        click.echo(key)


@click.command(context_settings=CONTEXT)
@click.option("-t", "--time", "grace", default=10.0, show_default=True, metavar="SECONDS")
@click.argument("containers", nargs=-1, required=True, shell_complete=complete_containers)
@click.pass_context
def restart(ctx, containers, grace) -> None:
    """Stop, then start containers."""
    from ..container.lifecycle import start as do_start, stop as do_stop
    for key in containers:
        do_stop(_store(ctx), key, grace)
        do_start(_store(ctx), key)
        click.echo(key)


def _freezer_command(name: str, paused: bool, doc: str) -> click.Command:
    """pause and unpause: the same loop over containers, freezing or thawing their cgroup."""
    @click.command(name, context_settings=CONTEXT, help=doc)
    @click.argument("containers", nargs=-1, required=True, shell_complete=complete_containers)
    @click.pass_context
    def command(ctx, containers) -> None:
        from ..container.lifecycle import pause as set_paused
        for key in containers:
            set_paused(_store(ctx), key, paused)
            click.echo(key)
    return command


pause = _freezer_command("pause", True, "Freeze every process of containers (cgroup freezer).")
unpause = _freezer_command("unpause", False, "Thaw paused containers.")


@click.command(context_settings=CONTEXT)
@click.argument("container", shell_complete=complete_containers)
@click.pass_context
def top(ctx, container) -> None:
    """The processes of a running container (host pids)."""
    from ..container.lifecycle import top as list_processes
    click.echo(f"{'PID':<8} {'USER':<12} COMMAND")
    for pid, user, cmd in list_processes(_store(ctx), container):
        click.echo(f"{pid:<8} {user:<12} {cmd}")


@click.command(context_settings=CONTEXT)
@click.argument("container", shell_complete=complete_containers)
@click.argument("new_name")
@click.pass_context
def rename(ctx, container, new_name) -> None:
    """Give a container a new name."""
    from ..container.lifecycle import rename as do_rename
    do_rename(_store(ctx), container, new_name)


@click.group("container", context_settings=CONTEXT)
def container_group() -> None:
    """Manage containers."""


@container_group.command("prune", context_settings=CONTEXT)
@click.option("-f", "--force", is_flag=True, help="Do not ask.")
@click.pass_context
def container_prune(ctx, force) -> None:
    """Remove all containers that are not running."""
    from ..container.lifecycle import prune
    if not force and not click.confirm("Remove all stopped containers?", default=False):
        return
    for cid in prune(_store(ctx)):
        click.echo(cid)


@click.command(context_settings=CONTEXT)
@click.argument("container", shell_complete=complete_containers)
@click.argument("private", required=False)
@click.pass_context
def port(ctx, container, private) -> None:
    """The container's published ports (or where PRIVATE[/PROTO] is published)."""
    from ..container.listing import published
    from ..container.records import Containers
    rec = Containers(_store(ctx)).find(container)
    for line in published(rec):
        host, _, inner = line.partition("->")
        if private is None:
            click.echo(f"{inner} -> {host}")
        elif inner == (private if "/" in private else private + "/tcp"):
            click.echo(host)


@click.command(context_settings=CONTEXT)
@click.option("--sig-proxy/--no-sig-proxy", default=True, show_default=True,
              help="Forward SIGINT, SIGTERM and SIGHUP to the container.")
@click.argument("container", shell_complete=complete_containers)
@click.pass_context
def attach(ctx, container, sig_proxy) -> None:
    """Follow a running detached container's output until it ends (its exit status); with -dit/-di, type into it (Ctrl-P Ctrl-Q detaches)."""
    from ..container.lifecycle import attach as follow
    sys.exit(follow(_store(ctx), container, _print_line, sig_proxy))


@click.command(context_settings=CONTEXT)
@click.argument("source")
@click.argument("destination")
@click.pass_context
def cp(ctx, source, destination) -> None:
    """Copy files between a container and the host: CONTAINER:PATH HOSTPATH, or the reverse ('-': a tar on stdin/stdout)."""
    from ..container.copying import copy_in, copy_out, split
    from ..errors import UsageError
    (src_c, src), (dst_c, dst) = split(source), split(destination)
    if bool(src_c) == bool(dst_c):
        raise UsageError("cp copies between a container and the host: give CONTAINER:PATH on exactly one side")
    if src_c:
        copy_out(_store(ctx), src_c, src, dst)
    else:
        copy_in(_store(ctx), src, dst_c, dst)


def register(group: click.Group) -> None:
    for command in (logs, exec_, stop, kill, wait, start, restart, pause, unpause, top, rename, cp, attach, port,
                    container_group):
        group.add_command(command)
