"""Docker's variable expansion, as BuildKit's shell lexer does it for the instructions that expand.

Instructions that expand: ADD, COPY, ENV, EXPOSE, FROM, LABEL, STOPSIGNAL, USER, VOLUME,
WORKDIR, ARG (its default), ONBUILD's trigger when it fires, and RUN's --mount options.  RUN,
CMD, ENTRYPOINT, SHELL and HEALTHCHECK are left to the shell in the container.

Outside quotes the escape character (``\\``, or the ``# escape=`` one) makes the next
character literal; in single quotes everything is literal; in double quotes variables
expand and only ``"``, ``$`` and the escape character can be escaped.  Forms: ``$V``,
``${V}``, ``${V:-word}`` / ``${V-word}`` (default when empty-or-unset / unset),
``${V:+word}`` / ``${V+word}`` (alternative), ``${V:?msg}`` / ``${V?msg}`` (error),
``${V#pat}`` ``${V##pat}`` ``${V%pat}`` ``${V%%pat}`` (trim), ``${V/pat/repl}``
``${V//pat/repl}`` (replace).  An unset variable expands to nothing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from .globs import bracket

SPECIAL = "@*#?-$!0"


class ExpandError(ValueError):
    """A malformed substitution; the caller adds the file and line."""


class _Lexer:
    def __init__(self, text: str, env: Mapping[str, str], escape: str, quotes: bool = True):
        self.s, self.i, self.env, self.esc, self.quotes = text, 0, env, escape, quotes

    def peek(self) -> str:
        return self.s[self.i] if self.i < len(self.s) else ""

    def next(self) -> str:
        ch = self.peek()
        self.i += 1 if ch else 0
        return ch

    # words: list of (text, splittable) pieces grouped into words
    def process(self, stop: str = "", raw_escapes: bool = False) -> tuple[str, list[str]]:
        result: list[str] = []
        words: list[str] = []
        cur: list[str] = []
        in_word = False

        def add_split(text: str) -> None:
            nonlocal in_word
            for ch in text:
                if ch.isspace():
                    if in_word:
                        words.append("".join(cur))
                        cur.clear()
                        in_word = False
                else:
                    cur.append(ch)
                    in_word = True

        def add_raw(text: str) -> None:
            nonlocal in_word
            cur.append(text)
            in_word = True

        while True:
            ch = self.peek()
            if ch == "":
                if stop:
                    raise ExpandError("syntax error: missing '}'")
                break
            if stop and ch == stop:
                self.next()
                break
            if self.quotes and ch == "'":
                t = self._single()
                result.append(t)
                add_raw(t)
            elif self.quotes and ch == '"':
                t = self._double()
                result.append(t)
                add_raw(t)
            elif ch == "$":
                t = self._dollar()
                result.append(t)
                add_split(t)
            else:
                self.next()
                if ch == self.esc:
                    if raw_escapes:
                        result.append(ch)
                        cur.append(ch)
                    nxt = self.next()
                    if nxt == "":
                        break
                    result.append(nxt)
                    add_raw(nxt)
                else:
                    result.append(ch)
                    add_split(ch)
        if in_word:
            words.append("".join(cur))
        return "".join(result), words

    def _single(self) -> str:
        self.next()
        out = []
        while True:
            ch = self.next()
            if ch == "":
                raise ExpandError("unexpected end of statement while looking for matching single-quote")
            if ch == "'":
                return "".join(out)
            out.append(ch)

    def _double(self) -> str:
        self.next()
        out = []
        while True:
            ch = self.peek()
            if ch == "":
                raise ExpandError("unexpected end of statement while looking for matching double-quote")
            if ch == '"':
                self.next()
                return "".join(out)
            if ch == "$":
                out.append(self._dollar())
                continue
            self.next()
            if ch == self.esc:
                nxt = self.peek()
                if nxt == "":
                    continue
                if nxt in ('"', "$", self.esc):
                    ch = self.next()
            out.append(ch)

    def _name(self) -> str:
        out = []
        ch = self.peek()
        if ch.isdigit():
            while self.peek().isdigit():
                out.append(self.next())
            return "".join(out)
        if ch and ch in SPECIAL:
            return self.next()
        while (ch := self.peek()) and (ch.isalnum() or ch == "_"):
            out.append(self.next())
        return "".join(out)

    def _get(self, name: str) -> tuple[str, bool]:
        if name in self.env:
            return self.env[name], True
        return "", False

    def _dollar(self) -> str:
        self.next()
        if self.peek() != "{":
            name = self._name()
            return self._get(name)[0] if name else "$"
        self.next()
        if self.peek() == "":
            raise ExpandError("syntax error: missing '}'")
        if self.peek() in "{}:":
            raise ExpandError("syntax error: bad substitution")
        name = self._name()
        ch = self.next()
        if ch == "":
            raise ExpandError("syntax error: missing '}'")
        if ch == "}":
            return self._get(name)[0]
        null_is_unset = False
        mod = ch
        if ch == ":":
            null_is_unset = True
            ch = self.next()
            mod += ch
        if ch in ("+", "-", "?", "#", "%"):
            word, _ = self.process("}", raw_escapes=ch in "#%")
            value, is_set = self._get(name)
            unset = not is_set or (null_is_unset and value == "")
            if ch == "-":
                return word if unset else value
            if ch == "+":
                return "" if unset else word
            if ch == "?":
                if not is_set:
                    raise ExpandError(f"{name}: {word or 'is not allowed to be unset'}")
                if null_is_unset and value == "":
                    raise ExpandError(f"{name}: {word or 'is not allowed to be empty'}")
                return value
            if null_is_unset:
                raise ExpandError(f"unsupported modifier ({mod}) in substitution")
            greedy = word.startswith(ch)
            if greedy:
                word = word[1:]
            return _trim(value, word, suffix=ch == "%", greedy=greedy)
        if ch == "/":
            replace_all = self.peek() == "/"
            if replace_all:
                self.next()
            pattern, _ = self.process("/", raw_escapes=True) if "/" in self.s[self.i:] else self.process("}", True)
            repl = ""
            if self.s[self.i - 1] == "/":
                repl, _ = self.process("}")
            return _replace(self._get(name)[0], pattern, repl, replace_all)
        raise ExpandError(f"unsupported modifier ({mod}) in substitution")


def _glob_regex(pattern: str) -> str:
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "[":
            found = bracket(pattern, i, negations="!^")
            if found is None:
                out.append(re.escape(c))
            else:
                regex, i = found
                out.append(regex)
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def _trim(value: str, pattern: str, suffix: bool, greedy: bool) -> str:
    rx = re.compile(_glob_regex(pattern), re.S)
    lengths = range(len(value), -1, -1) if greedy else range(0, len(value) + 1)
    for n in lengths:
        part = value[len(value) - n:] if suffix else value[:n]
        if rx.fullmatch(part):
            return value[:len(value) - n] if suffix else value[n:]
    return value


def _replace(value: str, pattern: str, repl: str, replace_all: bool) -> str:
    if not pattern:
        return value
    rx = re.compile(_glob_regex(pattern), re.S)
    out, i = [], 0
    while i <= len(value):
        for j in range(len(value), i - 1, -1):
            if j > i and rx.fullmatch(value[i:j]):
                out.append(repl)
                i = j
                if not replace_all:
                    return "".join(out) + value[i:]
                break
        else:
            if i < len(value):
                out.append(value[i])
            i += 1
    return "".join(out)


def expand_word(word: str, env: Mapping[str, str], escape: str = "\\") -> str:
    """One word, quotes removed, spaces kept (``ENV A="x y"``, ``WORKDIR``, COPY sources)."""
    return _Lexer(word, env, escape).process()[0]


def expand_words(text: str, env: Mapping[str, str], escape: str = "\\") -> list[str]:
    """Words split on unquoted spaces, also those a variable's value brings (as a shell does)."""
    return _Lexer(text, env, escape).process()[1]


def expand_heredoc(text: str, env: Mapping[str, str], escape: str = "\\") -> str:
    """A heredoc's body (unquoted name): variables expand, quotes stay, ``\\$`` is a ``$``."""
    out, i = [], 0
    lex = _Lexer(text, env, escape, quotes=False)
    while i < len(text):
        c = text[i]
        if c == escape and i + 1 < len(text) and text[i + 1] in ("$", escape):
            out.append(text[i + 1])
            i += 2
        elif c == "$":
            lex.i = i
            out.append(lex._dollar())
            i = lex.i
        else:
            out.append(c)
            i += 1
    return "".join(out)


__all__ = ["ExpandError", "expand_heredoc", "expand_word", "expand_words"]
