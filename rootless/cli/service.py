"""``rootless system service``: the Docker Engine API for Docker's own clients (rootless/api/)."""

from __future__ import annotations

import click

from .common import CONTEXT


@click.command("service", context_settings=CONTEXT)
@click.option("--socket", "socket_path", metavar="PATH",
              help="The unix socket to listen on [default: $XDG_RUNTIME_DIR/rootless/docker.sock].")
@click.option("-t", "--timeout", type=click.FloatRange(min=0), default=5.0, show_default=True, metavar="SECONDS",
              help="Exit after this many idle seconds (no connection open); 0: never.")
@click.option("-q", "--quiet", is_flag=True, help="Do not log each request on stderr.")
@click.pass_context
def service(ctx: click.Context, socket_path: str | None, timeout: float, quiet: bool) -> None:
    """Serve the Docker Engine API (version 1.41) on a unix socket only you can use.

    Point Docker's clients at it: export DOCKER_HOST=unix://$XDG_RUNTIME_DIR/rootless/docker.sock.
    A socket passed by systemd (socket activation, LISTEN_FDS) is used instead of --socket."""
    from ..paths import store_root
    from ..api.server import exec_service, open_socket
    root = store_root(ctx.find_root().obj["root"])
    sock, path = open_socket(socket_path)
    shown = path or "the socket systemd passed"
    click.echo(f"rootless: serving the Docker API on {shown}" + (f" (DOCKER_HOST=unix://{path})" if path else ""),
               err=True)
    exec_service(root, sock, path, timeout, quiet)


def register(group: click.Group) -> None:
    from .images import _subgroup
    _subgroup(group, "system", "Manage the store.").add_command(service)
