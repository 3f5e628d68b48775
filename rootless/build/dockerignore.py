""".dockerignore: which paths of the context are left out, by Docker's rules.

Each line is a pattern; ``#`` starts a comment line; blank lines are skipped.  A pattern is
cleaned as Go's filepath.Clean does, a leading ``/`` is dropped (patterns are relative to
the context's root anyway), ``!`` makes it an exception that includes again.  ``*`` matches
within one path component, ``?`` one character, ``[a-z]`` a class, ``**`` any number of
components (none included), ``\\`` escapes.  The last pattern that matches a path decides;
a pattern that matches a directory matches everything under it.  A directory that is left
out may still hold a path an exception includes: walkers must descend into it
(``may_include_below``) rather than skip it.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

from .globs import bracket


def clean(path: str) -> str:
    """Go's path.Clean."""
    if not path:
        return "."
    out = posixpath.normpath(path)
    if out.startswith("//"):
        out = "/" + out.lstrip("/")
    return out


def read_patterns(text: str) -> list[str]:
    out = []
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        p = line.strip()
        if not p:
            continue
        invert = p.startswith("!")
        if invert:
            p = p[1:].strip()
        if p:
            p = clean(p)
            if len(p) > 1 and p.startswith("/"):
                p = p[1:]
        out.append("!" + p if invert else p)
    return out


def _regex(pattern: str) -> re.Pattern:
    out = ["^"]
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            if i + 1 < n and pattern[i + 1] == "*":
                i += 2
                if i < n and pattern[i] == "/":
                    i += 1
                out.append(".*" if i >= n else "(.*/)?")
                continue
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "\\":
            if i + 1 < n:
                out.append(re.escape(pattern[i + 1]))
                i += 1
            else:
                out.append(re.escape("\\"))
        elif c == "[":
            found = bracket(pattern, i, negations="^!", first_may_close=False)
            if found is None:
                raise ValueError(f"unterminated [ in pattern {pattern!r}")
            regex, i = found
            out.append(regex)
        else:
            out.append(re.escape(c))
        i += 1
    out.append("$")
    return re.compile("".join(out), re.S)


@dataclass(frozen=True)
class _Pattern:
    text: str
    exclusion: bool
    rx: re.Pattern
    depth: int


class DockerIgnore:
    def __init__(self, patterns: list[str]):
        self.patterns: list[_Pattern] = []
        for p in patterns:
            exclusion = p.startswith("!")
            body = p[1:] if exclusion else p
            try:
                rx = _regex(body)
            except (ValueError, re.error) as e:
                raise ValueError(f".dockerignore: bad pattern {p!r}: {e}") from None
            self.patterns.append(_Pattern(body, exclusion, rx, len(body.split("/"))))
        self.has_exclusions = any(p.exclusion for p in self.patterns)

    @classmethod
    def from_text(cls, text: str) -> DockerIgnore:
        return cls(read_patterns(text))

    def ignored(self, path: str) -> bool:
        """Whether ``path`` (relative to the context, "/"-separated) is left out."""
        path = clean(path).lstrip("/")
        if path in (".", ""):
            return False
        parts = path.split("/")
        matched = False
        for p in self.patterns:
            hit = bool(p.rx.match(path))
            if not hit and len(parts) > 1 and p.depth <= len(parts) - 1:
                hit = bool(p.rx.match("/".join(parts[:p.depth])))
            if hit:
                matched = not p.exclusion
        return matched

    def may_include_below(self, directory: str) -> bool:
        """Whether something under an ignored directory may be included again by an exception:
        one whose components match the directory's, as far as both go (``**`` matches any)."""
        dparts = clean(directory).lstrip("/").split("/")
        for p in self.patterns:
            if not p.exclusion:
                continue
            pparts = p.text.split("/")
            for i, dp in enumerate(dparts):
                if i >= len(pparts) or "**" in pparts[i]:
                    return True
                if not _regex(pparts[i]).match(dp):
                    break
            else:
                return True
        return False


__all__ = ["DockerIgnore", "clean", "read_patterns"]
