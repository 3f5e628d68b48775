"""The command line: click commands only, each one engine call (rootless.image, rootless.container, ...)."""


def main(argv: list[str] | None = None) -> int:
    """The ``rootless`` program: a container command is handed to the fork server when one
    answers (cli/client.py: no click or engine import here then); else, and for the others,
    the command runs in this process."""
    import sys
    args = sys.argv[1:] if argv is None else argv
    from .client import handed_over
    code = handed_over(args)
    if code is not None:
        # Nothing of ours to finish (the server's child ran the command and flushed its
        # output): the interpreter's teardown would add 3 ms to every such command.
        import os
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError, AttributeError):
                pass
        os._exit(code)
    from .commands import main as run_here
    return run_here(argv)


__all__ = ["main"]
