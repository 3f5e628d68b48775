"""The package layout is the architecture: imports go one way and never in a loop.

The same check as /work/shared/tools/import-cycles.py: every ``import``/``from`` statement of
every module of rootless and fuse_overlay, those inside functions included, makes an edge;
a cycle among them fails, and so does an import against the layers: fuse_overlay importing
rootless, or anything but the command line itself importing rootless.cli.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("rootless", "fuse_overlay")


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            mods[name.removesuffix(".__init__")] = path
    return mods


def _graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(edges used for cycles, every module each one imports including packages)."""
    mods = _modules()

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    edges: dict[str, set[str]] = {m: set() for m in mods}
    imports: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = mod if is_pkg else mod.rpartition(".")[0]
                    for _ in range(node.level - 1):
                        base = base.rpartition(".")[0]
                    base = f"{base}.{node.module}" if node.module else base
                else:
                    base = node.module or ""
                targets = [f"{base}.{a.name}" for a in node.names] + [base]
            else:
                continue
            for t in targets:
                r = resolve(t)
                if r and r != mod:
                    imports[mod].add(r)
                    # a package's __init__ only gathers names of its modules: an edge into it
                    # (``from . import x`` names it too) would make every such import a loop
                    if mods[r].name != "__init__.py":
                        edges[mod].add(r)
    return edges, imports


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found = []
    for start in edges:
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on.add(start)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        found.append(sorted(comp))
    return found


def test_the_checker_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    edges, _ = _graph()
    assert len(edges) > 50, "the walk found too few modules"
    cycles = _cycles(edges)
    assert not cycles, "import cycles:\n" + "\n".join(" ".join(c) for c in cycles)


def test_fuse_overlay_knows_nothing_of_rootless():
    _, imports = _graph()
    bad = sorted(f"{m} imports {t}" for m, ts in imports.items() if m.startswith("fuse_overlay")
                 for t in ts if t == "rootless" or t.startswith("rootless."))
    assert not bad, "\n".join(bad)


def test_only_the_command_line_imports_it():
    _, imports = _graph()
    allowed = ("rootless.cli", "rootless.__main__")   # __main__: python -m rootless
    bad = sorted(f"{m} imports {t}" for m, ts in imports.items()
                 if not (m in allowed or m.startswith("rootless.cli."))
                 for t in ts if t == "rootless.cli" or t.startswith("rootless.cli."))
    assert not bad, "\n".join(bad)


def test_the_fork_server_imports_none_of_the_code_it_runs():
    _, imports = _graph()
    engine = sorted(t for t in imports["rootless.container.forkserver"]
                    if t.startswith("rootless.") and not t.startswith("rootless.sandbox"))
    assert not engine, f"the fork server imports {engine}: name it in container/services.py instead"


def test_one_decompressor_and_one_size_parser():
    """Decompression lives in rootless/image/compression.py, size strings in rootless/units.py
    (there used to be four decompressors and three parsers, each with its own gaps)."""
    import re
    for path in sorted((ROOT / "rootless").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        text = path.read_text()
        if rel != "rootless/image/compression.py":
            assert not re.search(r"^\s*(import|from) (gzip|bz2|lzma|zstandard)\b", text, re.M), \
                f"{rel} decompresses by itself: use rootless.image.compression"
        if rel != "rootless/units.py":
            assert not re.search(r"<< 30|1024 \*\* ", text), f"{rel} parses sizes by itself: use rootless.units"


def test_only_the_command_line_starts_the_api_and_the_engine_never_imports_it():
    """rootless/api is a face: the engine below never imports it (nor the builder, another face)."""
    _, imports = _graph()
    bad = sorted(f"{m} imports {t}" for m, ts in imports.items()
                 if not (m.startswith("rootless.api") or m.startswith("rootless.cli"))
                 for t in ts if t == "rootless.api" or t.startswith("rootless.api."))
    assert not bad, "\n".join(bad)
