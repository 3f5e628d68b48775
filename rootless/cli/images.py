"""Command line: image commands beyond pull/push/tag/rmi/images/import: save, load, export, inspect, history, system df and prune, image prune.

Each command is a thin layer: argument types, one engine call, output.  ``register(group)``
adds them to the ``rootless`` group (called by ``cli/commands.py``).  Import engine modules inside
the commands, not at the top: start-up pays only for what runs.
"""

from __future__ import annotations

import sys

import click

from .common import CONTEXT, complete_containers, complete_images, complete_objects, store as _store


def _write_output(path: str | None, what: str, writer) -> None:
    """``writer(fileobj)`` into ``path`` (the engine writes it atomically), or into stdout when
    it is not a terminal."""
    if path and path != "-":
        from ..image.archive import write_to
        write_to(path, writer)
        return
    if sys.stdout.isatty():
        from ..errors import UsageError
        raise UsageError(f"refusing to write {what} to a terminal: use -o FILE or redirect the output")
    with open(sys.stdout.fileno(), "wb", closefd=False) as out:
        writer(out)


@click.command(context_settings=CONTEXT)
@click.option("-o", "--output", metavar="FILE", help="Write to FILE instead of stdout.")
@click.option("--format", "fmt", type=click.Choice(["docker-archive", "oci-archive", "squashfs"]),
              default="docker-archive", show_default=True,
              help="Archive format; squashfs: one image's root filesystem and config in a file that "
                   "'rootless run FILE' runs without loading it (needs -o).")
@click.argument("images", nargs=-1, required=True, shell_complete=complete_images)
@click.pass_context
def save(ctx: click.Context, images: tuple[str, ...], output: str | None, fmt: str) -> None:
    """Save images to a tar archive (docker-archive or oci-archive), to stdout by default, or one
    image to a squashfs file."""
    store = _store(ctx)
    if fmt == "squashfs":
        from ..errors import UsageError
        from ..image import squashfs
        from ..sandbox import idmap
        if len(images) != 1:
            raise UsageError("--format squashfs saves one image: give one image name")
        if not output or output == "-":
            raise UsageError("--format squashfs needs a file: give -o FILE.sqfs")
        squashfs.save(store, idmap.detect(), images[0], output)
        return
    from ..image.archive import save as do_save
    _write_output(output, "an archive", lambda out: do_save(store, list(images), fmt, out))


@click.command(context_settings=CONTEXT)
@click.option("-i", "--input", "input_", metavar="FILE", help="Read from FILE instead of stdin.")
@click.option("-q", "--quiet", is_flag=True, help="No notes on standard error.")
@click.pass_context
def load(ctx: click.Context, input_: str | None, quiet: bool) -> None:
    """Load images from a tar archive (docker-archive or oci-archive, plain or gzip), stdin by default."""
    from ..image.archive import UNTAGGED_REPO, load as do_load
    from ..sandbox import idmap
    if not input_ and sys.stdin.isatty():
        from ..errors import UsageError
        raise UsageError("requested load from stdin, but stdin is a terminal: use -i FILE or redirect the input")
    loaded = do_load(_store(ctx), idmap.detect(), input_ or "-")
    for img, tags in loaded:
        for tag in tags:
            if tag.startswith(UNTAGGED_REPO + "/"):
                click.echo(f"Loaded image ID: {img.id}")
                if not quiet:
                    click.echo(f"rootless: the archive gives it no name: it is {tag} until you tag it "
                               "('rootless tag'); 'image prune' removes it", err=True)
            else:
                click.echo(f"Loaded image: {tag}")


@click.command(context_settings=CONTEXT)
@click.option("-o", "--output", metavar="FILE", help="Write to FILE instead of stdout.")
@click.argument("container", shell_complete=complete_containers)
@click.pass_context
def export(ctx: click.Context, container: str, output: str | None) -> None:
    """Export a container's root filesystem as a tar archive, to stdout by default."""
    from ..container.export import export as do_export
    from ..sandbox import idmap
    store = _store(ctx)
    maps = idmap.detect()
    _write_output(output, "an archive", lambda out: do_export(store, maps, container, out))


@click.command(context_settings=CONTEXT)
@click.option("--type", "kind", type=click.Choice(["image", "container"]), help="Only look for this kind of object.")
@click.option("-f", "--format", "fmt", metavar="TEMPLATE",
              help="Format each object with a Go template ({{.Id}}, {{.State.Pid}}, {{json .Config}}, "
                   "{{range}}, {{if}}, {{index}}, {{join}}...).")
@click.option("-s", "--size", is_flag=True, hidden=True)
@click.argument("names", nargs=-1, required=True, shell_complete=complete_objects)
@click.pass_context
def inspect(ctx: click.Context, names: tuple[str, ...], kind: str | None, fmt: str | None, size: bool) -> None:
    """Low-level information on images and containers, as a JSON array."""
    import json
    from ..image.inspect import inspect as do_inspect
    from .template import Template
    found, errors = do_inspect(_store(ctx), list(names), kind)
    if fmt and fmt != "json":
        template = Template(fmt)
        for obj in found:
            click.echo(template.render(obj))
    else:
        click.echo(json.dumps(found, indent=4))
    for e in errors:
        click.echo(e, err=True)
    if errors:
        sys.exit(1)


def _human(n: float) -> str:
    from ..units import human_size
    return human_size(n)


@click.command(context_settings=CONTEXT)
@click.option("--no-trunc", is_flag=True, help="Do not truncate output.")
@click.option("-q", "--quiet", is_flag=True, help="Only image ids.")
@click.option("-H", "--human", type=click.BOOL, default=True, metavar="BOOL",
              help="Sizes and dates in human-readable form (default true).")
@click.option("--format", "fmt", metavar="table|json|TEMPLATE", default="table")
@click.argument("image", shell_complete=complete_images)
@click.pass_context
def history(ctx: click.Context, image: str, no_trunc: bool, quiet: bool, human: bool, fmt: str) -> None:
    """Show the history of an image."""
    import json
    from ..image.inspect import ago, history as do_history
    from .template import render_rows
    rows = do_history(_store(ctx), image)
    if quiet:
        for r in rows:
            click.echo(r["Id"] if no_trunc or r["Id"] == "<missing>" else r["Id"][7:19])
    elif fmt == "json":
        click.echo(json.dumps(rows, indent=2))
    elif fmt != "table":
        for line in render_rows(fmt, rows, {"Id": "IMAGE", "CreatedBy": "CREATED BY"}):
            click.echo(line)
    else:
        click.echo(f"{'IMAGE':<14} {'CREATED':<20} {'CREATED BY':<46} {'SIZE':<10} COMMENT")
        for r in rows:
            ident = r["Id"] if no_trunc or r["Id"] == "<missing>" else r["Id"][7:19]
            by = r["CreatedBy"]
            if not no_trunc and len(by) > 45:
                by = by[:44] + "…"
            created = ago(r["Created"]) if human else r["Created"]
            size = _human(r["Size"]) if human else str(r["Size"])
            click.echo(f"{ident:<14} {created:<20} {by:<46} {size:<10} {r['Comment']}")


@click.command("df", context_settings=CONTEXT)
@click.option("--format", "fmt", metavar="table|json|TEMPLATE", default="table")
@click.pass_context
def system_df(ctx: click.Context, fmt: str) -> None:
    """Disk use of images, containers and local volumes."""
    import json
    from ..image.gc import df
    from .template import render_rows
    rows = df(_store(ctx))
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
    elif fmt != "table":
        for line in render_rows(fmt, rows, {"TotalCount": "TOTAL"}):
            click.echo(line)
    else:
        click.echo(f"{'TYPE':<16} {'TOTAL':<8} {'ACTIVE':<8} {'SIZE':<10} RECLAIMABLE")
        for r in rows:
            pct = f" ({100 * r['Reclaimable'] // r['Size']}%)" if r["Size"] else ""
            click.echo(f"{r['Type']:<16} {r['TotalCount']:<8} {r['Active']:<8} {_human(r['Size']):<10} "
                       f"{_human(r['Reclaimable'])}{pct}")


@click.command("prune", context_settings=CONTEXT)
@click.option("-a", "--all", "all_images", is_flag=True, help="Remove every image no container uses, not only garbage.")
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.pass_context
def image_prune(ctx: click.Context, all_images: bool, force: bool, fmt: str) -> None:
    """Remove unused images: blobs and layers no image or container uses (-a: also unused images)."""
    import json
    from ..image.gc import prune
    from ..sandbox import idmap
    if not force:
        what = ("all images without at least one container associated to them" if all_images
                else "all dangling images (blobs and layers no image uses)")
        if not click.confirm(f"WARNING! This will remove {what}.\nAre you sure you want to continue?",
                             default=False):
            return
    out = prune(_store(ctx), idmap.detect(), all_images)
    if fmt == "json":
        click.echo(json.dumps({"ImagesDeleted": [{"Untagged": t} for t in out.untagged]
                               + [{"Deleted": d} for d in out.layers],
                               "BlobsDeleted": out.blobs, "SpaceReclaimed": out.reclaimed}, indent=2))
        return
    if out.untagged or out.layers:
        click.echo("Deleted Images:")
        for t in out.untagged:
            click.echo(f"untagged: {t}")
        for d in out.layers:
            click.echo(f"deleted: {d}")
        click.echo()
    click.echo(f"Total reclaimed space: {_human(out.reclaimed)}")


@click.command("prune", context_settings=CONTEXT)
@click.option("-a", "--all", "all_images", is_flag=True, help="Remove every image no container uses, not only dangling ones.")
@click.option("--volumes", is_flag=True, help="Remove the anonymous volumes no container uses too.")
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def system_prune(ctx: click.Context, all_images: bool, volumes: bool, force: bool) -> None:
    """Remove stopped containers, unused networks, dangling images (-a: every unused image) and
    with --volumes unused anonymous volumes."""
    from ..errors import UsageError
    from ..system import prune
    if not force:
        items = ["all stopped containers", "all networks not used by at least one container"]
        if volumes:
            items.append("all anonymous volumes not used by at least one container")
        items.append("all images without at least one container associated to them" if all_images
                     else "all dangling images")
        items.append("unused build cache")
        if not sys.stdin.isatty():
            raise UsageError("system prune asks for confirmation, and standard input is not a terminal: "
                             "use -f to prune without asking")
        text = "WARNING! This will remove:\n" + "".join(f"  - {i}\n" for i in items)
        if not click.confirm(text + "\nAre you sure you want to continue?", default=False):
            return
    out = prune(_store(ctx), all_images, volumes)
    for title, names in (("Deleted Containers:", out.containers), ("Deleted Networks:", out.networks),
                         ("Deleted Volumes:", out.volumes)):
        if names:
            click.echo(title)
            for name in names:
                click.echo(name)
            click.echo()
    if out.images.untagged or out.images.layers:
        click.echo("Deleted Images:")
        for t in out.images.untagged:
            click.echo(f"untagged: {t}")
        for d in out.images.layers:
            click.echo(f"deleted: {d}")
        click.echo()
    if out.build_cache:
        click.echo(f"Deleted build cache objects: {out.build_cache}\n")
    click.echo(f"Total reclaimed space: {_human(out.reclaimed)}")


COMMANDS = [save, load, export, inspect, history]


def _subgroup(group: click.Group, name: str, help_text: str) -> click.Group:
    existing = group.commands.get(name)
    if isinstance(existing, click.Group):
        return existing
    sub = click.Group(name, help=help_text, context_settings=CONTEXT)
    group.add_command(sub)
    return sub


def register(group: click.Group) -> None:
    for command in COMMANDS:
        group.add_command(command)
    image = _subgroup(group, "image", "Manage images.")
    image.add_command(image_prune)
    for command in (save, load, inspect, history):
        image.add_command(command)
    if "images" in group.commands:
        image.add_command(group.commands["images"], "ls")
    system = _subgroup(group, "system", "Manage the store.")
    system.add_command(system_df)
    system.add_command(system_prune)
    container = _subgroup(group, "container", "Manage containers.")
    container.add_command(export)
