"""``rootless build`` and ``builder prune``: the flags, the progress lines, the outputs."""

from __future__ import annotations

import os
import sys
import time

import click

from .common import CONTEXT, store as _store, warn


class _Progress:
    """BuildKit-like lines on stderr: ``[2/5] RUN ...``, the step's output, ``DONE 0.4s`` or
    ``CACHED``; nothing with -q."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.current = ""
        self.tail: list[bytes] = []           # the running step's last lines, for a failure
        self.started = time.monotonic()

    def _err(self, text: str) -> None:
        if not self.quiet:
            click.echo(text, err=True)

    def step(self, number: int, total: int, text: str) -> None:
        self.current = f"[{number}/{total}] {text}"
        self.tail = []
        self._err(self.current)

    def cached(self) -> None:
        self._err("  CACHED")

    def output(self, data: bytes) -> None:
        self.tail = (self.tail + data.splitlines(keepends=True))[-20:]
        if not self.quiet:
            sys.stderr.buffer.write(data)
            sys.stderr.buffer.flush()

    def done(self, seconds: float) -> None:
        self._err(f"  DONE {seconds:.1f}s")

    def warning(self, text: str) -> None:
        warn(text)


def _pairs(items: tuple[str, ...], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not key:
            raise click.UsageError(f"invalid {flag} '{item}': use KEY=VALUE")
        if not sep and flag == "--build-arg":
            if key not in os.environ:
                continue                       # Docker: KEY alone takes the caller's value, if set
            value = os.environ[key]
        out[key] = value
    return out


def _secret(item: str):
    from ..build.executor import Secret
    fields = dict(part.partition("=")[::2] for part in item.split(","))
    sid, src = fields.get("id"), fields.get("src") or fields.get("source")
    if not sid or not src:
        raise click.UsageError(f"invalid --secret '{item}': use id=NAME,src=FILE")
    if not os.path.isfile(src):
        raise click.UsageError(f"--secret {item}: {src} is not a readable file")
    return Secret(sid, os.path.abspath(src))


def _output(item: str) -> tuple[str, str]:
    fields = dict(part.partition("=")[::2] for part in item.split(","))
    kind, dest = fields.get("type", "local"), fields.get("dest")
    if kind not in ("local", "tar", "oci-archive", "image") or (kind != "image" and not dest):
        raise click.UsageError(f"invalid --output '{item}': use type=local|tar|oci-archive,dest=PATH")
    return kind, dest or ""


@click.command(context_settings={**CONTEXT, "max_content_width": 110})
@click.option("-t", "--tag", "tags", multiple=True, metavar="NAME[:TAG]", help="Name the image (repeatable).")
@click.option("-f", "--file", "dockerfile", metavar="FILE|-",
              help="The Dockerfile (default CONTEXT/Dockerfile; '-': standard input).")
@click.option("--build-arg", multiple=True, metavar="KEY[=VALUE]", help="Set a build argument (ARG).")
@click.option("--target", metavar="STAGE", help="Build this stage (and the stages it needs) only.")
@click.option("--no-cache", is_flag=True, help="Run every step; use no cached result.")
@click.option("--pull", is_flag=True, help="Pull the FROM images even if they are in the store.")
@click.option("--label", multiple=True, metavar="KEY=VALUE", help="Set a label on the image.")
@click.option("--iidfile", metavar="FILE", help="Write the image id to FILE.")
@click.option("-q", "--quiet", is_flag=True, help="Print only the image id.")
@click.option("--network", default="default", show_default=True, metavar="MODE",
              help="RUN steps' network: default, none or host (a step's --network wins).")
@click.option("--secret", multiple=True, metavar="id=NAME,src=FILE",
              help="A file that RUN --mount=type=secret,id=NAME can read (never stored in the image).")
@click.option("-o", "--output", "outputs", multiple=True, metavar="type=local|tar|oci-archive,dest=PATH",
              help="Also write the result: its files into a directory, or as a tar, or an OCI archive.")
@click.option("--storage-driver", default="auto", envvar="ROOTLESS_STORAGE_DRIVER", show_default=True,
              type=click.Choice(["auto", "fuse-overlay", "overlay", "vfs"]), help="RUN steps' root filesystem.")
@click.argument("context", metavar="CONTEXT|-")
@click.pass_context
def build(ctx: click.Context, context: str, tags, dockerfile, build_arg, target, no_cache, pull, label,
          iidfile, quiet, network, secret, outputs, storage_driver) -> None:
    """Build an image from a Dockerfile and a context directory (or a tar, or a Dockerfile, on stdin)."""
    import tempfile
    from ..build.context import load_context
    from ..build.executor import BuildRequest, build as run_build
    from ..sandbox import idmap
    if network not in ("default", "none", "host"):
        raise click.UsageError(f"invalid --network '{network}': use default, none or host")
    store = _store(ctx)
    wanted = [_output(o) for o in outputs]
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    req = BuildRequest(tags=list(tags), build_args=_pairs(build_arg, "--build-arg"), target=target,
                       labels=_pairs(label, "--label"), no_cache=no_cache, pull=pull, network=network,
                       secrets=[_secret(s) for s in secret], storage_driver=storage_driver,
                       source_date_epoch=int(epoch) if epoch and epoch.isdigit() else None)
    progress = _Progress(quiet)
    with tempfile.TemporaryDirectory(prefix="rootless-context-") as scratch:
        build_ctx = load_context(context, dockerfile, stdin=sys.stdin.buffer, scratch_dir=scratch)
        try:
            image = run_build(store, idmap.detect(), build_ctx, req, progress)
        except Exception:
            if progress.tail and quiet:        # -q hid the output: the failing step's tail
                sys.stderr.buffer.write(b"".join(progress.tail))
            raise
    try:
        for kind, dest in wanted:
            _write_output(store, image, kind, dest)
        if iidfile:
            with open(iidfile, "w") as f:
                f.write(image.id)
    except OSError as e:       # the image is built and stored; only this copy of it failed
        raise click.UsageError(f"image {image.id} was built, but {e.filename or 'the output'} cannot be "
                               f"written ({e.strerror}): give a writable path") from None
    if not quiet:
        for tag in req.tags:
            click.echo(f"Successfully tagged {tag}", err=True)
    click.echo(image.id)


def _write_output(store, image, kind: str, dest: str) -> None:
    from ..sandbox import idmap
    if kind == "image":
        return
    if kind == "oci-archive":
        from ..image.archive import save
        with open(dest, "wb") as out:
            save(store, [image.ref or image.id], "oci-archive", out)
        return
    from ..container.export import export_layers
    dirs = [store.layer_dir(d) for d in image.diff_ids]
    if kind == "tar":
        with (sys.stdout.buffer if dest == "-" else open(dest, "wb")) as out:
            export_layers(idmap.detect(), dirs, out, f"image {image.ref or image.id}")
        return
    import tarfile
    import tempfile
    os.makedirs(dest, exist_ok=True)
    with tempfile.TemporaryFile() as tmp:
        export_layers(idmap.detect(), dirs, tmp, f"image {image.ref or image.id}")
        tmp.seek(0)
        with tarfile.open(fileobj=tmp, mode="r:") as tar:
            for m in tar:
                if m.isdev():
                    continue
                tar.extract(m, dest, set_attrs=not m.issym())       # our own export: trusted


@click.command("prune", context_settings=CONTEXT)
@click.option("-a", "--all", "everything", is_flag=True, help="(Docker's flag) the same: the whole cache.")
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def builder_prune(ctx: click.Context, everything: bool, force: bool) -> None:
    """Empty the build cache: its step records and RUN --mount=type=cache directories."""
    from ..image.buildcache import BuildCache
    from ..sandbox import idmap
    from ..units import human_size
    if not force:
        if not sys.stdin.isatty():
            raise click.UsageError("builder prune removes the whole build cache: add -f to confirm")
        if not click.confirm("This removes the whole build cache. Are you sure?"):
            return
    from ..image import gc
    store, maps = _store(ctx), idmap.detect()
    entries, size = BuildCache(store).clear(maps)
    size += gc.collect(store, maps).reclaimed          # the layers only the cache kept
    click.echo(f"Deleted build cache objects: {entries}")
    click.echo(f"Total reclaimed space: {human_size(size)}")


@click.group(context_settings=CONTEXT)
def builder() -> None:
    """The build cache."""


builder.add_command(builder_prune)


def register(group: click.Group) -> None:
    group.add_command(build)
    group.add_command(builder)
