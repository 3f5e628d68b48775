"""The bracket expression ``[...]`` shared by the builder's three pattern languages (COPY
sources as Go's filepath.Match, .dockerignore as moby's patternmatcher, ``${V#pattern}`` as
the shell), as a regular expression."""

from __future__ import annotations


def bracket(pattern: str, i: int, negations: str = "^", first_may_close: bool = True) -> tuple[str, int] | None:
    """The regex of the ``[...]`` starting at ``pattern[i]``, and the index of its ``]``; None
    when it is not closed.  ``first_may_close``: a ``]`` right after ``[`` is a member (the
    shell's and Go's rule); ``negations``: the characters that negate the class after ``[``."""
    j = pattern.find("]", i + (2 if first_may_close else 1))
    if j < 0:
        return None
    body = pattern[i + 1:j]
    if body[:1] and body[:1] in negations:
        body = "^" + body[1:]
    return "[" + body.replace("\\", "\\\\") + "]", j
