"""What every command module of the command line shares: click's settings and the store."""

from __future__ import annotations

import click

CONTEXT = {"help_option_names": ["--help"], "max_content_width": 100}


def store(ctx: click.Context):
    """The image store the global --root (or ROOTLESS_ROOT, or the default) names."""
    from ..paths import store_root
    from ..image.store import Store
    return Store(store_root(ctx.find_root().obj["root"]))


def warn(text: str) -> None:
    click.echo(f"rootless: warning: {text}", err=True)
