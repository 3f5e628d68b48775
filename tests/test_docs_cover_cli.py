"""Every command and every option the command line offers is documented in docs/ (or the README)."""

from __future__ import annotations

from pathlib import Path

import click

from rootless.cli.commands import cli as main

ROOT = Path(__file__).resolve().parent.parent


def _docs() -> str:
    return "\n".join(p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])


def _commands(group: click.Group, prefix: str = ""):
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        if cmd is None or cmd.hidden:
            continue
        path = f"{prefix}{name}"
        yield path, cmd
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, path + " ")


def test_every_command_and_option_is_documented():
    docs = _docs()
    missing = []
    for path, cmd in _commands(main):
        if f"`{path}" not in docs and f"rootless {path}" not in docs:
            missing.append(f"command '{path}'")
        for param in cmd.params:
            if not isinstance(param, click.Option) or param.hidden:
                continue
            names = [o for o in param.opts + param.secondary_opts if o != "--help"]
            if names and not any(n in docs for n in names):
                missing.append(f"option {'/'.join(names)} of '{path}'")
    assert not missing, "documented nowhere in README.md or docs/*.md:\n" + "\n".join(missing)
