"""A Dockerfile's text to a list of instructions, with line numbers; nothing is evaluated here.

The text is split by BuildKit's own parser (the ``dockerfile`` package on PyPI: BuildKit's
``frontend/dockerfile/parser`` compiled in), so line continuations, comments inside
continued lines, empty continuation lines, ``# escape=``, the JSON (exec) form and heredocs
(``RUN <<EOF``, ``COPY <<-EOT /path``, several in one instruction) behave exactly as in
``docker build``.  Chosen over writing one, and over ``dockerfile-parse``, which reads
heredoc bodies as instructions (``echo hi`` became an ``ECHO`` instruction) and keeps
comments that sit inside a continued line.  What that parser leaves to BuildKit's later
stages is done here: parser directives (which it applies but does not report), the heredoc
name's quoting (``<<'EOF'``: no expansion) and ``<<-`` (leading tabs removed), the flags each
instruction takes, the number of its arguments, and error messages with the line: the parser
raises without one, so the line is found by parsing ever longer prefixes of the text.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field, replace

import dockerfile as _bk

from ..errors import DockerfileError

KEYWORDS = ("ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK", "LABEL",
            "MAINTAINER", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR")

# flag name -> (takes a value, may repeat); a flag that takes no value may still be --flag=true|false
FLAGS: dict[str, dict[str, tuple[bool, bool]]] = {
    "FROM": {"platform": (True, False)},
    "RUN": {"mount": (True, True), "network": (True, False), "security": (True, False)},
    "COPY": {"from": (True, False), "chown": (True, False), "chmod": (True, False), "link": (False, False)},
    "ADD": {"chown": (True, False), "chmod": (True, False), "link": (False, False),
            "checksum": (True, False), "keep-git-dir": (False, False)},
    "HEALTHCHECK": {"interval": (True, False), "timeout": (True, False), "start-period": (True, False),
                    "start-interval": (True, False), "retries": (True, False)},
}

_DIRECTIVE = re.compile(r"^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$")
_HEREDOC = re.compile(r"(\d*)<<(-?)(['\"]?)([^\s'\"<>|&;]+)\3")


@dataclass(frozen=True)
class Heredoc:
    name: str
    content: str          # as written, ``<<-`` tabs included; see body
    expand: bool          # False when the name was quoted (<<'EOF', <<"EOF")
    chomp: bool           # <<-: leading tabs are removed from each line
    fd: int = 0

    @property
    def body(self) -> str:
        return re.sub(r"(?m)^\t+", "", self.content) if self.chomp else self.content


@dataclass(frozen=True)
class Instruction:
    keyword: str                                  # upper case: RUN, COPY, ...
    args: tuple[str, ...]                         # shell form: RUN/CMD/... one string; words otherwise
    json: bool                                    # the exec (JSON array) form
    flags: tuple[tuple[str, str | None], ...]     # ("mount", "type=cache,target=/x"), ("link", None)
    heredocs: tuple[Heredoc, ...]
    line: int
    end_line: int
    original: str                                 # the instruction as the parser joined it
    filename: str = "Dockerfile"
    trigger: Instruction | None = None            # ONBUILD's instruction

    def flag(self, name: str) -> str | None:
        for k, v in self.flags:
            if k == name:
                return v if v is not None else "true"
        return None

    def flag_all(self, name: str) -> list[str]:
        return [v or "" for k, v in self.flags if k == name]

    def bool_flag(self, name: str) -> bool:
        v = self.flag(name)
        if v is None:
            return False
        if v.lower() in ("true", "1", ""):
            return True
        if v.lower() in ("false", "0"):
            return False
        raise self.error(f"--{name}={v} is not a boolean", f"write --{name} or --{name}=false")

    def error(self, problem: str, fix: str | None = None) -> DockerfileError:
        return DockerfileError(self.filename, self.line, problem, fix)


@dataclass
class Dockerfile:
    filename: str
    instructions: list[Instruction]
    directives: dict[str, str] = field(default_factory=dict)
    escape: str = "\\"
    notes: list[str] = field(default_factory=list)


def _directives(text: str, filename: str) -> tuple[dict[str, str], list[str]]:
    found: dict[str, str] = {}
    notes = []
    for n, line in enumerate(text.lstrip("\ufeff").splitlines(), 1):
        m = _DIRECTIVE.match(line.strip())
        if not m:
            break
        key, value = m.group(1).lower(), m.group(2)
        if key not in ("escape", "syntax", "check"):
            break                                  # an unknown directive is a comment, and ends them
        if key in found:
            raise DockerfileError(filename, n, f"the parser directive '{key}' is given twice",
                                  "keep one")
        found[key] = value
        if key == "syntax":
            notes.append(f"{filename}:{n}: '# syntax={value}' is ignored: rootless builds with its own "
                         "Dockerfile frontend")
    return found, notes


def _locate(text: str, message: str) -> int | None:
    """The first line at which the text up to it fails as the whole text did."""
    lines = text.splitlines(keepends=True)
    for n in range(1, len(lines) + 1):
        try:
            _bk.parse_string("".join(lines[:n]))
        except _bk.GoParseError as e:
            if str(e) == message:
                return n
    return None


def _parse_flags(kw: str, raw: tuple[str, ...], filename: str, line: int) -> tuple[tuple[str, str | None], ...]:
    allowed = FLAGS.get(kw, {})
    out: list[tuple[str, str | None]] = []
    for f in raw:
        name, eq, value = f[2:].partition("=")
        spec = allowed.get(name)
        if spec is None:
            close = difflib.get_close_matches(name, list(allowed), n=1)
            if not allowed:
                fix = f"{kw} takes no flags"
            elif close:
                fix = f"did you mean --{close[0]}?"
            else:
                fix = f"{kw} takes " + ", ".join(f"--{a}" for a in allowed)
            raise DockerfileError(filename, line, f"unknown flag {f.partition('=')[0]} for {kw}", fix)
        takes_value, repeats = spec
        if takes_value and not eq:
            raise DockerfileError(filename, line, f"--{name} for {kw} needs a value", f"write --{name}=VALUE")
        if not repeats and any(k == name for k, _ in out):
            raise DockerfileError(filename, line, f"--{name} is given twice to {kw}", "keep one")
        out.append((name, value if eq else None))
    return tuple(out)


def _heredocs(cmd, kw: str) -> tuple[Heredoc, ...]:
    if not cmd.heredocs:
        return ()
    marks = []
    for word in cmd.value:
        marks += _HEREDOC.findall(word)
    by_name = {name: (chomp == "-", not quote) for _fd, chomp, quote, name in marks}
    out = []
    for h in cmd.heredocs:
        chomp, expand = by_name.get(h.name, (False, True))
        out.append(Heredoc(h.name, h.content, expand, chomp, h.file_descriptor))
    return tuple(out)


def _check_args(ins: Instruction) -> None:
    kw, args = ins.keyword, ins.args
    n = len([a for a in args if a != ""])
    if kw == "FROM":
        if n not in (1, 3) or (n == 3 and args[1].lower() != "as"):
            raise ins.error("FROM takes an image and, optionally, a stage name", "write FROM IMAGE [AS NAME]")
        if n == 3 and not re.fullmatch(r"[a-zA-Z][a-zA-Z0-9_.-]*", args[2]):
            raise ins.error(f"invalid stage name {args[2]!r}",
                            "a stage name starts with a letter and holds letters, digits, '-', '_' and '.'")
    elif kw in ("RUN",) and n == 0 and not ins.heredocs:
        raise ins.error("RUN needs a command", "write RUN COMMAND or RUN [\"EXECUTABLE\", \"ARG\"...]")
    elif kw in ("CMD", "ENTRYPOINT") and n == 0 and not ins.json:
        raise ins.error(f"{kw} needs a command", f'write {kw} COMMAND or {kw} ["EXECUTABLE", "ARG"...]')
    elif kw in ("COPY", "ADD") and len(args) < 2:
        raise ins.error(f"{kw} needs at least one source and a destination", f"write {kw} SOURCE... DEST")
    elif kw in ("WORKDIR", "USER", "STOPSIGNAL", "MAINTAINER") and n != 1:
        raise ins.error(f"{kw} takes one argument" + ("" if n else ", none was given"))
    elif kw in ("ARG", "EXPOSE", "VOLUME", "LABEL", "ENV") and n == 0:
        raise ins.error(f"{kw} needs at least one argument")
    elif kw == "SHELL" and not ins.json:
        raise ins.error("SHELL takes a JSON array", 'write SHELL ["/bin/bash", "-c"]')
    elif kw == "HEALTHCHECK":
        if not args or args[0].upper() not in ("NONE", "CMD"):
            raise ins.error("HEALTHCHECK takes NONE or CMD COMMAND", "write HEALTHCHECK [OPTIONS] CMD COMMAND")
        if args[0].upper() == "NONE" and (n > 1 or ins.flags):
            raise ins.error("HEALTHCHECK NONE takes no other arguments")
        if args[0].upper() == "CMD" and n < 2:
            raise ins.error("HEALTHCHECK CMD needs a command")


def _instruction(cmd, filename: str, text_for_trigger: str | None = None) -> Instruction:
    kw = cmd.cmd.upper()
    line = cmd.start_line
    if kw.endswith(":") and kw[:-1] in KEYWORDS:
        rest = cmd.original.split(":", 1)[1].strip()
        raise DockerfileError(filename, line, f"'{cmd.cmd}': instructions take no colon",
                              f"write '{kw[:-1]} {rest}'")
    if kw not in KEYWORDS:
        close = difflib.get_close_matches(kw, KEYWORDS, n=1, cutoff=0.6)
        raise DockerfileError(filename, line, f"unknown instruction {cmd.cmd}",
                              f"did you mean {close[0]}?" if close else None)
    flags = _parse_flags(kw, cmd.flags, filename, line)
    trigger = None
    if kw == "ONBUILD":
        body = re.sub(r"(?is)^\s*ONBUILD\s*", "", cmd.original)
        if not body.strip():
            raise DockerfileError(filename, line, "ONBUILD needs an instruction", "write ONBUILD INSTRUCTION")
        try:
            subs = _bk.parse_string(body)
        except _bk.GoParseError as e:
            raise DockerfileError(filename, line, f"ONBUILD {body.strip()}: {e}") from None
        sub = subs[0]
        trigger = _instruction(sub, filename)
        trigger = _relocate(trigger, line)
        if trigger.keyword in ("ONBUILD", "FROM", "MAINTAINER"):
            raise DockerfileError(filename, line, f"{trigger.keyword} is not allowed as an ONBUILD trigger")
        args: tuple[str, ...] = (body,)
    else:
        args = tuple(cmd.value)
    ins = Instruction(kw, args, bool(cmd.json), flags, _heredocs(cmd, kw), line, cmd.end_line,
                      cmd.original, filename, trigger)
    if kw != "ONBUILD":
        _check_args(ins)
    return ins


def _relocate(ins: Instruction, line: int) -> Instruction:
    return replace(ins, line=line + ins.line - 1, end_line=line + ins.end_line - 1)


def parse(text: str, filename: str = "Dockerfile") -> Dockerfile:
    """Parse a Dockerfile; a ``DockerfileError`` says ``FILE:LINE: problem; fix``."""
    directives, notes = _directives(text, filename)
    try:
        cmds = _bk.parse_string(text)
    except _bk.GoParseError as e:
        msg = str(e)
        if msg == "file with no instructions":
            raise DockerfileError(filename, None, "the file has no instructions",
                                  "a Dockerfile starts with FROM IMAGE") from None
        raise DockerfileError(filename, _locate(text, msg), msg) from None
    instructions = [_instruction(c, filename) for c in cmds]
    return Dockerfile(filename, instructions, directives, directives.get("escape", "\\"), notes)


def parse_trigger(text: str, filename: str) -> Instruction:
    """One ONBUILD trigger as recorded in an image's config (``RUN echo hi``)."""
    try:
        cmds = _bk.parse_string(text)
    except _bk.GoParseError as e:
        raise DockerfileError(filename, None, f"the base image's ONBUILD trigger {text!r}: {e}") from None
    if len(cmds) != 1:
        raise DockerfileError(filename, None, f"the base image's ONBUILD trigger {text!r} is not one instruction")
    ins = _instruction(cmds[0], filename)
    if ins.keyword in ("ONBUILD", "FROM", "MAINTAINER"):
        raise DockerfileError(filename, None, f"{ins.keyword} is not allowed as an ONBUILD trigger")
    return ins


__all__ = ["Dockerfile", "Heredoc", "Instruction", "KEYWORDS", "parse", "parse_trigger"]
