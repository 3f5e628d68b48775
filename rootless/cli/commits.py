"""Command line: a container's changes — ``commit`` (as an image) and ``diff`` (as A/C/D lines).

``register(group)`` adds them to the ``rootless`` group (called by ``cli/commands.py``).
"""

from __future__ import annotations

import click

from .common import CONTEXT, complete_containers, store as _store


def _source_date_epoch() -> int | None:
    import os
    from ..errors import UsageError
    value = os.environ.get("SOURCE_DATE_EPOCH", "")
    if not value:
        return None
    if not value.isdigit():
        raise UsageError(f"SOURCE_DATE_EPOCH='{value}' is not a number of seconds since 1970: set it to one "
                         "(e.g. $(git log -1 --format=%ct)) or unset it")
    return int(value)


@click.command(context_settings=CONTEXT)
@click.option("-m", "--message", default="", metavar="MSG", help="Commit message (the history entry's comment).")
@click.option("-a", "--author", default="", metavar="AUTHOR", help='Author (e.g. "Jane Doe <jane@example.com>").')
@click.option("-c", "--change", multiple=True, metavar="INSTRUCTION",
              help="Apply a Dockerfile instruction to the image's configuration: CMD, ENTRYPOINT, ENV, "
                   "EXPOSE, LABEL, USER, WORKDIR, VOLUME or STOPSIGNAL. Repeatable.")
@click.option("-p", "--pause", type=click.BOOL, default=True, is_flag=False, flag_value=True, metavar="[=BOOL]",
              show_default=True, help="Freeze a running container while its changes are read (--pause=false: don't).")
@click.argument("container", shell_complete=complete_containers)
@click.argument("name", required=False, metavar="[NAME[:TAG]]")
@click.pass_context
def commit(ctx: click.Context, container: str, name: str | None, message: str, author: str,
           change: tuple[str, ...], pause: bool) -> None:
    """Make a new image from a container's changes; prints the image id.

    The image is the container's image with one more layer holding what the container added,
    changed and deleted, and the configuration it ran with (its command, environment, working
    directory, user), changed by -c.  SOURCE_DATE_EPOCH, when set, clamps the files' times.
    """
    from ..container.commit import commit as do_commit
    from ..sandbox import idmap
    done = do_commit(_store(ctx), idmap.detect(), container, name, message=message, author=author,
                     changes=list(change), pause=pause, source_date_epoch=_source_date_epoch())
    for warning in done.warnings:
        click.echo(f"rootless: warning: {warning}", err=True)
    click.echo(done.image.id)


@click.command(context_settings=CONTEXT)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="json: a JSON array of {\"Path\", \"Kind\"} (Kind 0 changed, 1 added, 2 deleted, as Docker's API).")
@click.argument("container", shell_complete=complete_containers)
@click.pass_context
def diff(ctx: click.Context, container: str, fmt: str) -> None:
    """List the files a container added (A), changed (C) and deleted (D) in its image's tree."""
    from ..container.commit import diff as do_diff
    from ..sandbox import idmap
    found = do_diff(_store(ctx), idmap.detect(), container)
    if fmt == "json":
        import json
        kinds = {"C": 0, "A": 1, "D": 2}
        click.echo(json.dumps([{"Path": path, "Kind": kinds[kind]} for kind, path in found]))
        return
    for kind, path in found:
        click.echo(f"{kind} {path}")


def register(group: click.Group) -> None:
    """``commit`` and ``diff``, and Docker's ``container commit``/``container diff`` (registered
    after cli/containers.py's ``container`` group)."""
    container_group = group.commands.get("container")
    for command in (commit, diff):
        group.add_command(command)
        if isinstance(container_group, click.Group):
            container_group.add_command(command)
