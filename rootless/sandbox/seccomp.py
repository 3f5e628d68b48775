"""Seccomp filters: Docker's default profile and profiles in Docker's JSON format.

``program(profile, caps)`` returns the compiled BPF program for a profile ("default" or a
path) and the container's capability set, or None for no filter; ``load(program)`` installs
it in the calling process (the container's process, just before ``execve``).
"""

from __future__ import annotations


class ProfileError(Exception):
    """A profile that cannot be read or compiled; the message names the file and the problem."""


def program(profile: str, caps: frozenset[str]) -> bytes | None:
    """The BPF program (struct sock_filter array) for ``profile``; None: unconfined."""
    return None


def load(prog: bytes) -> None:
    """Install ``prog`` as this process's seccomp filter (kept across execve, inherited by children)."""
    raise NotImplementedError
