"""Command line: image commands beyond pull/push/tag/rmi/images/import: save, load, export, inspect, history, system df, image prune.

Each command is a thin layer: argument types, one engine call, output.  ``register(group)``
adds them to the ``rootless`` group (called by ``cli.py``).  Import engine modules inside
the commands, not at the top: start-up pays only for what runs.
"""

from __future__ import annotations

import click


def register(group: click.Group) -> None:
    pass
