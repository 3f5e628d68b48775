"""Command line: ``network create|ls|inspect|rm`` (user-defined networks)."""

from __future__ import annotations

import json
import sys

import click

from .common import CONTEXT, complete_containers, complete_networks, format_option, print_templated


def _networks(ctx: click.Context):
    from ..network.user_networks import Networks
    from .common import store
    return Networks(store(ctx))


@click.group(context_settings=CONTEXT)
def network() -> None:
    """Manage user-defined networks: containers on one reach each other by name."""


@network.command(context_settings=CONTEXT)
@click.option("--subnet", metavar="CIDR", help="IPv4 subnet (default: the next free /24 of 10.89.0.0/16).")
@click.option("--internal", is_flag=True, help="No traffic in or out of the machine: containers talk only "
                                               "to each other.")
@click.option("--label", multiple=True, metavar="KEY=VALUE", help="Set a label on the network.")
@click.argument("name")
@click.pass_context
def create(ctx, name, subnet, internal, label) -> None:
    """Create a network."""
    from ..container.runflags import labels
    click.echo(_networks(ctx).create(name, subnet, internal, labels(list(label), [])).name)


@network.command("ls", context_settings=CONTEXT)
@click.option("-q", "--quiet", is_flag=True)
@click.option("-f", "--filter", "filters", multiple=True, metavar="KEY=VALUE",
              help="name=TEXT, label=KEY[=VALUE], dangling=true|false.")
@format_option()
@click.pass_context
def ls(ctx, quiet, filters, fmt) -> None:
    """List networks."""
    nets = _networks(ctx).listed(list(filters))
    if quiet:
        for n in nets:
            click.echo(n.name)
    elif fmt == "json":
        click.echo(json.dumps([_row(n) for n in nets], indent=2))
    elif print_templated(fmt, [_row(n) for n in nets]):
        pass
    else:
        click.echo(f"{'NAME':<24} {'SUBNET':<18} GATEWAY")
        for n in nets:
            click.echo(f"{n.name:<24} {n.subnet:<18} {n.gateway}")


def _row(n) -> dict:
    return {"Name": n.name, "Subnet": n.subnet, "Gateway": n.gateway, "Internal": n.internal, "Labels": n.labels}


@network.command(context_settings=CONTEXT)
@click.argument("names", nargs=-1, required=True, shell_complete=complete_networks)
@click.pass_context
def inspect(ctx, names) -> None:
    """Show networks as JSON (Docker's shape: Name, Driver, IPAM, Containers)."""
    nets = _networks(ctx)
    click.echo(json.dumps([nets.inspect(name) for name in names], indent=4))


@network.command(context_settings=CONTEXT)
@click.argument("names", nargs=-1, required=True, shell_complete=complete_networks)
@click.pass_context
def rm(ctx, names) -> None:
    """Remove networks (refused while a container uses one)."""
    from ..errors import RootlessError
    failed = False
    for name in names:
        try:
            _networks(ctx).remove(name)
            click.echo(name)
        except RootlessError as e:
            click.echo(f"rootless: {e}", err=True)
            failed = True
    sys.exit(1 if failed else 0)


@network.command(context_settings=CONTEXT)
@click.option("--alias", multiple=True, metavar="NAME", help="Another name for the container on this network.")
@click.argument("name", shell_complete=complete_networks)
@click.argument("container", shell_complete=complete_containers)
@click.pass_context
def connect(ctx, name, container, alias) -> None:
    """Connect a container made on a user network to another one (at once if it runs, else at its next start)."""
    from ..network.user_networks import connect as join
    from ..paths import runtime_dir
    from ..sandbox import idmap
    join(_networks(ctx).store, idmap.detect(), runtime_dir(), name, container, list(alias))


@network.command(context_settings=CONTEXT)
@click.argument("name", shell_complete=complete_networks)
@click.argument("container", shell_complete=complete_containers)
@click.pass_context
def disconnect(ctx, name, container) -> None:
    """Disconnect a container from a network."""
    from ..network.user_networks import disconnect as leave
    from ..paths import runtime_dir
    leave(_networks(ctx).store, runtime_dir(), name, container)


def register(group: click.Group) -> None:
    group.add_command(network)
