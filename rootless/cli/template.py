"""Go templates for ``--format``, the part of text/template that Docker's users write.

    {{.Field.Sub}}  {{.Labels.key}}  {{json .}}  {{json .Config}}  {{index .Labels "a.b"}}
    {{range .Mounts}}{{.Source}} {{end}}  {{range $k, $v := .Labels}}{{$k}}={{$v}} {{end}}
    {{if .Running}}up{{else}}down{{end}}  {{with .X}}..{{end}}  {{join .Args ","}}
    {{lower .Name}} {{upper .Name}} {{title .Name}} {{len .Args}} {{split .Name "-"}}
    {{printf "%s:%d" .Name .Port}} {{eq .State "running"}} {{ne ..}} {{not ..}} {{and ..}} {{or ..}}
    {{- trims -}}, "strings", `raw strings`, numbers, true/false, (sub pipelines), | pipes

Field names are looked up as written, then without regard to case (Docker's ``.ID`` finds our
``Id``).  ``table`` before a template prints a header line of the fields' names first.
A template that does not parse, or uses what is not there in a way Go refuses, raises
``UsageError`` naming the template.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ..errors import UsageError

_TOKEN = re.compile(r'\s*(?:(?P<str>"(?:[^"\\]|\\.)*")|(?P<raw>`[^`]*`)|(?P<num>-?\d+(?:\.\d+)?)'
                    r'|(?P<var>\$[A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*)|(?P<field>(?:\.[A-Za-z0-9_]+)+|\.)'
                    r'|(?P<assign>:=|=)|(?P<sym>[(),|])|(?P<word>[A-Za-z_][A-Za-z0-9_]*))')


class TemplateError(UsageError):
    pass


def _fail(template: str, why: str) -> TemplateError:
    return TemplateError(f"template parsing error: {template!r}: {why}")


# --------------------------------------------------------------------------- parsing

def _lex_actions(text: str) -> list[tuple[str, str]]:
    """[("text", s) | ("action", s)], with {{- and -}} trimming applied."""
    out: list[tuple[str, str]] = []
    i = 0
    while True:
        j = text.find("{{", i)
        if j < 0:
            out.append(("text", text[i:]))
            return out
        out.append(("text", text[i:j]))
        k = text.find("}}", j)
        if k < 0:
            raise ValueError("unclosed action")
        inner = text[j + 2:k]
        if inner.startswith("- ") or inner == "-":
            out[-1] = ("text", out[-1][1].rstrip())
            inner = inner[1:]
        i = k + 2
        if inner.endswith(" -"):
            inner = inner[:-1]
            m = re.match(r"\s*", text[i:])
            i += m.end() if m else 0
        if not inner.strip().startswith("/*"):
            out.append(("action", inner.strip()))


def _tokens(action: str) -> list[tuple[str, str]]:
    out, i = [], 0
    while i < len(action):
        if action[i:].strip() == "":
            break
        m = _TOKEN.match(action, i)
        if not m or m.end() == i:
            raise ValueError(f"unexpected {action[i:].strip()[:20]!r}")
        kind = m.lastgroup
        out.append((kind, m.group(kind)))
        i = m.end()
    return out


class _Node:
    pass


class _Text(_Node):
    def __init__(self, text: str):
        self.text = text


class _Action(_Node):
    def __init__(self, pipe, assign: list[str] | None = None):
        self.pipe, self.assign = pipe, assign


class _Block(_Node):
    def __init__(self, kind: str, pipe, assign: list[str] | None):
        self.kind, self.pipe, self.assign = kind, pipe, assign
        self.body: list[_Node] = []
        self.orelse: list[_Node] = []


def _parse(template: str) -> list[_Node]:
    root: list[_Node] = []
    stack: list[tuple[_Block | None, list[_Node]]] = [(None, root)]
    for kind, value in _lex_actions(template):
        body = stack[-1][1]
        if kind == "text":
            if value:
                body.append(_Text(value))
            continue
        toks = _tokens(value)
        if not toks:
            continue
        head = toks[0][1] if toks[0][0] == "word" else ""
        if head in ("if", "range", "with"):
            assign, rest = _assignment(toks[1:])
            block = _Block(head, _pipeline(rest), assign)
            body.append(block)
            stack.append((block, block.body))
        elif head == "else":
            block = stack[-1][0]
            if block is None:
                raise ValueError("else outside if/range/with")
            if len(toks) > 1 and toks[1] == ("word", "if"):          # else if: an if in the else
                inner = _Block("if", _pipeline(toks[2:]), None)
                inner.chained = True                                   # type: ignore[attr-defined]
                block.orelse.append(inner)
                stack[-1] = (block, block.orelse)
                stack.append((inner, inner.body))
            else:
                stack[-1] = (block, block.orelse)
        elif head == "end":
            if len(stack) == 1:
                raise ValueError("end without if/range/with")
            while getattr(stack[-1][0], "chained", False):
                stack.pop()                 # the else-ifs end with their if
            stack.pop()
        else:
            assign, rest = _assignment(toks)
            body.append(_Action(_pipeline(rest), assign))
    if len(stack) != 1:
        raise ValueError("missing end")
    return root


def _assignment(toks):
    """``$x := pipeline`` or ``$k, $v := pipeline``: (names, rest)."""
    if len(toks) >= 3 and toks[0][0] == "var" and toks[1] == ("assign", ":="):
        return [toks[0][1]], toks[2:]
    if (len(toks) >= 5 and toks[0][0] == "var" and toks[1] == ("sym", ",") and toks[2][0] == "var"
            and toks[3] == ("assign", ":=")):
        return [toks[0][1], toks[2][1]], toks[4:]
    return None, toks


def _pipeline(toks):
    """[command, ...], each command a list of operands (a nested list for a parenthesis)."""
    commands, current, stack = [], [], []
    for kind, value in toks:
        if (kind, value) == ("sym", "("):
            stack.append((commands, current))
            commands, current = [], []
        elif (kind, value) == ("sym", ")"):
            if not stack:
                raise ValueError("unbalanced )")
            commands.append(current)
            sub = commands
            commands, current = stack.pop()
            current.append(("pipe", sub))
        elif (kind, value) == ("sym", "|"):
            commands.append(current)
            current = []
        else:
            current.append((kind, value))
    if stack:
        raise ValueError("unbalanced (")
    commands.append(current)
    if any(not c for c in commands):
        raise ValueError("empty command")
    return commands


# --------------------------------------------------------------------------- evaluation

def _field(obj: Any, name: str) -> Any:
    if isinstance(obj, dict):
        if name in obj:
            return obj[name]
        lowered = name.lower()
        for k, v in obj.items():
            if isinstance(k, str) and k.lower() == lowered:
                return v
        if obj and all(isinstance(k, str) and k[:1].isupper() for k in obj):
            raise ValueError(f"can't evaluate field {name}")    # an object of Docker's, not a map
        return None
    return getattr(obj, name, None)


def _path(obj: Any, path: str) -> Any:
    for part in path.split(".")[1:]:
        if part:
            obj = _field(obj, part)
    return obj


def _truth(v: Any) -> bool:
    return bool(v) if not isinstance(v, (int, float)) or isinstance(v, bool) else v != 0


def _text(v: Any) -> str:
    if v is None:
        return "<no value>"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dict):
        return "map[" + " ".join(f"{k}:{_text(x)}" for k, x in sorted(v.items())) + "]"
    if isinstance(v, (list, tuple)):
        return "[" + " ".join(_text(x) for x in v) + "]"
    return str(v)


def _printf(fmt: str, *args: Any) -> str:
    py = re.sub(r"%v", "%s", fmt)
    try:
        return py % tuple(_text(a) if isinstance(a, (dict, list, bool, type(None))) else a for a in args)
    except (TypeError, ValueError) as e:
        raise ValueError(f"printf: {e}") from None


def _index(v: Any, *keys: Any) -> Any:
    for k in keys:
        if isinstance(v, dict):
            v = v.get(k)
        elif isinstance(v, (list, tuple)):
            v = v[int(k)] if -len(v) <= int(k) < len(v) else None
        else:
            return None
    return v


FUNCS = {
    "json": lambda v: json.dumps(v),
    "lower": lambda v: _text(v).lower(),
    "upper": lambda v: _text(v).upper(),
    "title": lambda v: _text(v).title(),
    "join": lambda v, sep: sep.join(_text(x) for x in (v or [])),
    "split": lambda v, sep: _text(v).split(sep),
    "len": lambda v: len(v or ()),
    "index": _index,
    "printf": _printf,
    "println": lambda *a: " ".join(_text(x) for x in a) + "\n",
    "print": lambda *a: "".join(_text(x) for x in a),
    "truncate": lambda v, n: _text(v)[:int(n)],
    "pad": lambda v, before, after: " " * int(before) + _text(v) + " " * int(after),
    "eq": lambda a, *bs: any(a == b for b in bs),
    "ne": lambda a, b: a != b,
    "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b,
    "gt": lambda a, b: a > b,
    "ge": lambda a, b: a >= b,
    "not": lambda v: not _truth(v),
    "and": lambda *a: next((x for x in a if not _truth(x)), a[-1]),
    "or": lambda *a: next((x for x in a if _truth(x)), a[-1]),
}


class _Scope:
    def __init__(self, dot: Any, root: Any, variables: dict[str, Any]):
        self.dot, self.root, self.vars = dot, root, variables

    def with_dot(self, dot: Any) -> "_Scope":
        return _Scope(dot, self.root, dict(self.vars))


def _operand(scope: _Scope, tok) -> Any:
    kind, value = tok
    if kind == "field":
        return scope.dot if value == "." else _path(scope.dot, value)
    if kind == "var":
        name, _, rest = value.partition(".")
        if name == "$":
            base = scope.root
        elif name in scope.vars:
            base = scope.vars[name]
        else:
            raise ValueError(f"undefined variable {name}")
        return _path(base, "." + rest) if rest else base
    if kind == "str":
        return json.loads(value)
    if kind == "raw":
        return value[1:-1]
    if kind == "num":
        return float(value) if "." in value else int(value)
    if kind == "pipe":
        return _run(scope, value)
    if kind == "word":
        if value in ("true", "false"):
            return value == "true"
        if value == "nil":
            return None
    raise ValueError(f"unexpected {value!r}")


def _run(scope: _Scope, pipeline) -> Any:
    result, have = None, False
    for command in pipeline:
        head = command[0]
        if head[0] == "word" and head[1] in FUNCS:
            args = [_operand(scope, t) for t in command[1:]] + ([result] if have else [])
            try:
                result = FUNCS[head[1]](*args)
            except TypeError:
                raise ValueError(f"wrong number of arguments for {head[1]}") from None
        elif head[0] == "word" and head[1] not in ("true", "false", "nil"):
            raise ValueError(f'function "{head[1]}" not defined')
        else:
            if len(command) != 1:
                raise ValueError(f"can't give arguments to {head[1]!r}")
            result = _operand(scope, head)
        have = True
    return result


def _exec(nodes: list[_Node], scope: _Scope, out: list[str]) -> None:
    for node in nodes:
        if isinstance(node, _Text):
            out.append(node.text)
        elif isinstance(node, _Action):
            value = _run(scope, node.pipe)
            if node.assign:
                scope.vars[node.assign[0]] = value
            else:
                out.append(_text(value))
        elif isinstance(node, _Block):
            value = _run(scope, node.pipe)
            if node.kind == "if":
                _exec(node.body if _truth(value) else node.orelse, scope, out)
            elif node.kind == "with":
                if _truth(value):
                    _exec(node.body, scope.with_dot(value), out)
                else:
                    _exec(node.orelse, scope, out)
            else:
                items = (sorted(value.items()) if isinstance(value, dict) else
                         list(enumerate(value or [])))
                if not items:
                    _exec(node.orelse, scope, out)
                for key, item in items:
                    inner = scope.with_dot(item)
                    if node.assign:
                        if len(node.assign) == 2:
                            inner.vars[node.assign[0]], inner.vars[node.assign[1]] = key, item
                        else:
                            inner.vars[node.assign[0]] = item
                    _exec(node.body, inner, out)


class Template:
    def __init__(self, text: str):
        self.source = text.replace("\\n", "\n").replace("\\t", "\t")
        self.table = False
        body = self.source
        if body.startswith("table ") or body == "table":
            self.table, body = True, body[len("table"):].lstrip()
        try:
            self.nodes = _parse(body)
        except ValueError as e:
            raise _fail(text, str(e)) from None
        self.body = body

    def render(self, data: Any) -> str:
        out: list[str] = []
        try:
            _exec(self.nodes, _Scope(data, data, {"$": data}), out)
        except ValueError as e:
            raise _fail(self.source, str(e)) from None
        return "".join(out)

    def header(self, names: dict[str, str] | None = None) -> str:
        """The ``table`` header: each action's last field name in capitals (or ``names``'s)."""
        names = names or {}

        def title(m: re.Match) -> str:
            inner = m.group(1).strip()
            field = re.findall(r"\.([A-Za-z0-9_]+)", inner)
            key = field[-1] if field else inner
            return names.get(key, names.get(key.lower(), re.sub(r"(?<=[a-z])(?=[A-Z])", " ", key).upper()))
        return re.sub(r"\{\{-?(.*?)-?\}\}", title, self.body)


def render_rows(fmt: str, rows: list[dict], headers: dict[str, str] | None = None) -> list[str]:
    """Lines of ``rows`` through template ``fmt`` (a ``table`` template gets a header first)."""
    t = Template(fmt)
    lines = [t.header(headers)] if t.table else []
    return lines + [t.render(r) for r in rows]


def is_template(fmt: str | None) -> bool:
    return bool(fmt) and fmt not in ("table", "json", "text")
