"""Command line: volume commands: volume create|ls|inspect|rm|prune.

Each command is a thin layer: argument types, one engine call, output.  ``register(group)``
adds them to the ``rootless`` group (called by ``cli/commands.py``).  Import engine modules inside
the commands, not at the top: start-up pays only for what runs.
"""

from __future__ import annotations

import sys

import click

from .common import CONTEXT, complete_volumes, format_option, print_templated


def _volumes(ctx: click.Context):
    from .common import store
    from ..volumes import Volumes
    return Volumes(store(ctx))


def _labels(items: tuple[str, ...]) -> dict[str, str]:
    from ..errors import UsageError
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        if not key:
            raise UsageError(f"invalid label '{item}': use KEY=VALUE")
        out[key] = value
    return out


@click.group(context_settings=CONTEXT)
def volume() -> None:
    """Manage volumes."""


@volume.command(context_settings=CONTEXT)
@click.option("-d", "--driver", default="local", show_default=True, help="Volume driver (only local).")
@click.option("--label", multiple=True, metavar="KEY=VALUE", help="Set a label on the volume.")
@click.option("-o", "--opt", multiple=True, metavar="KEY=VALUE", help="Driver options (none are supported).")
@click.argument("name", required=False)
@click.pass_context
def create(ctx: click.Context, name: str | None, driver: str, label: tuple[str, ...], opt: tuple[str, ...]) -> None:
    """Create a volume (a generated name if NAME is not given); print its name."""
    from ..errors import UsageError
    if driver != "local":
        raise UsageError(f"volume driver '{driver}' is not supported: only 'local'")
    if opt:
        raise UsageError(f"volume driver options are not supported (got '{opt[0]}')")
    vols = _volumes(ctx)
    with vols.store.lock():
        click.echo(vols.create(name, _labels(label)))


@volume.command("ls", context_settings=CONTEXT)
@click.option("-q", "--quiet", is_flag=True, help="Only volume names.")
@format_option()
@click.option("-f", "--filter", "filters", multiple=True, metavar="KEY=VALUE",
              help="dangling=true|false, name=TEXT, label=KEY[=VALUE], driver=local.")
@click.pass_context
def ls(ctx: click.Context, quiet: bool, fmt: str, filters: tuple[str, ...]) -> None:
    """List volumes."""
    import json
    rows = _volumes(ctx).listed(list(filters))
    if quiet:
        for v in rows:
            click.echo(v["Name"])
    elif fmt == "json":
        click.echo(json.dumps(rows, indent=2))
    elif print_templated(fmt, rows, {"Name": "VOLUME NAME"}):
        pass
    else:
        click.echo(f"{'DRIVER':<10}VOLUME NAME")
        for v in rows:
            click.echo(f"{v['Driver']:<10}{v['Name']}")


@volume.command(context_settings=CONTEXT)
@click.argument("names", nargs=-1, required=True, shell_complete=complete_volumes)
@click.pass_context
def inspect(ctx: click.Context, names: tuple[str, ...]) -> None:
    """Show volumes as JSON (Docker's fields)."""
    import json
    from ..errors import RootlessError
    vols = _volumes(ctx)
    out, failed = [], False
    for name in names:
        try:
            out.append(vols.get(name))
        except RootlessError as e:
            click.echo(f"rootless: {e}", err=True)
            failed = True
    click.echo(json.dumps(out, indent=4))
    sys.exit(1 if failed else 0)


@volume.command(context_settings=CONTEXT)
@click.option("-f", "--force", is_flag=True, help="Remove even if containers use the volume; no error if missing.")
@click.argument("names", nargs=-1, required=True, shell_complete=complete_volumes)
@click.pass_context
def rm(ctx: click.Context, names: tuple[str, ...], force: bool) -> None:
    """Remove volumes (refused while a container, running or not, uses one)."""
    from ..errors import RootlessError
    from ..sandbox import idmap
    from ..volumes import VolumeNotFound
    vols = _volumes(ctx)
    maps = idmap.detect()
    failed = False
    for name in names:
        try:
            with vols.store.lock():
                vols.remove(name, maps, force)
            click.echo(name)
        except VolumeNotFound as e:
            if not force:
                click.echo(f"rootless: {e}", err=True)
                failed = True
        except RootlessError as e:
            click.echo(f"rootless: {e}", err=True)
            failed = True
    sys.exit(1 if failed else 0)


@volume.command(context_settings=CONTEXT)
@click.option("-a", "--all", "prune_all", is_flag=True, help="Named volumes too, not only anonymous ones.")
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def prune(ctx: click.Context, prune_all: bool, force: bool) -> None:
    """Remove the anonymous volumes no container uses (with -a: every unused volume)."""
    from ..sandbox import idmap
    from ..units import human_size
    what = "local volumes" if prune_all else "anonymous local volumes"
    if not force and not click.confirm(f"WARNING! This will remove {what} not used by at least one "
                                       "container.\nAre you sure you want to continue?"):
        return
    removed, space = _volumes(ctx).prune(idmap.detect(), prune_all)
    if removed:
        click.echo("Deleted Volumes:")
        for name in removed:
            click.echo(name)
        click.echo("")
    click.echo(f"Total reclaimed space: {human_size(space)}")


def register(group: click.Group) -> None:
    group.add_command(volume)
