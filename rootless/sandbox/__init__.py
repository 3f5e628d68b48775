"""Low-level Linux primitives: namespaces, id maps, mounts, capabilities.

Nothing here knows about images or the CLI; the engine (``rootless.run``) passes
in plain data describing what to do.
"""
