"""What every command module of the command line shares: click's settings and the store."""

from __future__ import annotations

import click

CONTEXT = {"help_option_names": ["--help"], "max_content_width": 100}


def store(ctx: click.Context):
    """The image store the global --root (or ROOTLESS_ROOT, or the default) names."""
    from ..paths import store_root
    from ..image.store import Store
    return Store(store_root(ctx.find_root().obj["root"]))


def format_option(default: str = "table"):
    """--format: table (or text), json, or a Go template ('table {{.ID}}\t{{.Names}}')."""
    return click.option("--format", "fmt", default=default, show_default=True, metavar=f"{default}|json|TEMPLATE",
                        help="A table, JSON, or a Go template: {{.Field}}, {{json .}}, 'table ...' for a "
                             "header, {{range}}, {{if}}, {{join}}, {{lower}}...")


def print_templated(fmt: str, rows: list, headers: dict | None = None) -> bool:
    """Print ``rows`` through ``fmt`` if it is a template; False if it is not one."""
    from .template import is_template, render_rows
    if not is_template(fmt):
        return False
    for line in render_rows(fmt, rows, headers):
        click.echo(line)
    return True


def warn(text: str) -> None:
    click.echo(f"rootless: warning: {text}", err=True)


# --- shell completion: names from the store (click calls these while completing) ------------

def _completion_store(ctx: click.Context):
    from ..paths import store_root
    from ..image.store import Store
    return Store(store_root(ctx.find_root().params.get("root")))


def _matching(names, incomplete: str) -> list:
    from click.shell_completion import CompletionItem
    return [CompletionItem(n) for n in sorted(set(names)) if n.startswith(incomplete)]


def complete_containers(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list:
    try:
        from ..container.records import Containers
        recs = Containers(_completion_store(ctx)).all()
    except Exception:  # noqa: BLE001 - completion never fails loudly
        return []
    return _matching([r.name for r in recs if not r.config.get("builder")], incomplete)


def complete_images(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list:
    try:
        tags = _completion_store(ctx).tags()          # familiar names: busybox:latest
    except Exception:  # noqa: BLE001
        return []
    return _matching(list(tags) + [t.removesuffix(":latest") for t in tags], incomplete)


def complete_objects(ctx: click.Context, param: click.Parameter, incomplete: str) -> list:
    """Containers and images (inspect)."""
    return complete_containers(ctx, param, incomplete) + complete_images(ctx, param, incomplete)


def complete_volumes(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list:
    try:
        from ..volumes import Volumes
        return _matching(Volumes(_completion_store(ctx)).names(), incomplete)
    except Exception:  # noqa: BLE001
        return []


def complete_networks(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list:
    try:
        from ..network.user_networks import Networks
        return _matching([n.name for n in Networks(_completion_store(ctx)).all()], incomplete)
    except Exception:  # noqa: BLE001
        return []
