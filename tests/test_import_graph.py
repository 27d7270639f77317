"""The import graph of the package folders: no cycles, no import from a lower layer into a
higher one (by ``import`` statement or by a module name in a string).

Layers, bottom to top (a module may import its own layer and the layers below it):

    common  <  data  <  codec  <  lm  <  tts  <  benchmarks  <  flexicodec (top __init__)

``data`` sits below ``codec``: the codec's trainers and evaluation read corpora and audio
through ``flexicodec.data``, while data needs only ``common`` (atomic writes). The graph is
built from the source with ``ast`` (every ``import`` / ``from ... import``, also inside
functions), plus every string constant that is exactly a module name of the package (with
an optional ``:attr``), which is how ``importlib.import_module`` / ``__import__`` dispatch
tables name their targets.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOP = "flexicodec"
#: package folder → its subpackage name; the order is the layering, bottom first
LAYERS = ["common", "data", "codec", "lm", "tts", "benchmarks"]
TOP_FOLDER = "flexicodec_top"           # holds flexicodec/__init__.py (the public surface)


def layer_of(module: str) -> int:
    """Layer index of a ``flexicodec.*`` module (the top package is above all)."""
    parts = module.split(".")
    if parts[0] != TOP:
        raise ValueError(f"not a {TOP} module: {module}")
    if len(parts) == 1:
        return len(LAYERS)
    return LAYERS.index(parts[1])


def package_modules(repo: Path = REPO) -> dict[str, Path]:
    """``{dotted module name: file}`` for every module of the package folders."""
    mods = {TOP: repo / TOP_FOLDER / "__init__.py"}
    for folder in LAYERS:
        for p in sorted((repo / folder).rglob("*.py")):
            parts = [folder, *p.relative_to(repo / folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join([TOP, *parts])] = p
    return mods


def _resolve(name: str, modules: set[str]) -> str | None:
    """The longest prefix of dotted ``name`` that is a package module (None if none)."""
    parts = name.split(".")
    for k in range(len(parts), 0, -1):
        if ".".join(parts[:k]) in modules:
            return ".".join(parts[:k])
    return None


def imports_of(source: str, module: str, is_package: bool, modules: set[str]
               ) -> dict[str, str]:
    """``{imported package module: how}`` for one module's source; ``how`` is "import" or
    "string" (a module name in a string constant)."""
    tree = ast.parse(source)
    out: dict[str, str] = {}
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            targets = [prefix] + [f"{prefix}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value.split(":")[0]      # "pkg.module" or "pkg.module:attr"
            if text in modules and text != module:
                out.setdefault(text, "string")
            continue
        for t in targets:
            mod = _resolve(t, modules)
            if mod is not None and mod != module:
                out[mod] = "import"
    return out


def import_graph(repo: Path = REPO) -> dict[str, dict[str, str]]:
    mods = package_modules(repo)
    names = set(mods)
    return {m: imports_of(p.read_text(), m, p.name == "__init__.py", names)
            for m, p in mods.items()}


def find_cycle(graph: dict[str, dict[str, str]]) -> list[str] | None:
    """One cycle of the graph as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, {})):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def _parents(module: str) -> set[str]:
    parts = module.split(".")
    return {".".join(parts[:k]) for k in range(1, len(parts))}


def layer_violations(graph: dict[str, dict[str, str]]) -> list[str]:
    """Every edge from a module to a module of a higher layer."""
    bad = []
    for src, deps in graph.items():
        for dst, how in deps.items():
            if dst in _parents(src):
                continue            # importing one's own parent package runs its __init__
            if layer_of(dst) > layer_of(src):
                bad.append(f"{src} -> {dst} ({how})")
    return sorted(bad)


def cycle_graph(graph: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    """The graph without edges to a module's own parent packages (``import a.b.c`` runs
    ``a/__init__`` and ``a/b/__init__`` first; an ``__init__`` naming its children is the
    usual package shape, not a cycle of modules)."""
    return {s: {d: h for d, h in deps.items() if d not in _parents(s)}
            for s, deps in graph.items()}


# ------------------------------------------------------------------------------------------
# the checker itself, on small synthetic graphs: it must see violations
# ------------------------------------------------------------------------------------------
def test_checker_finds_a_cycle_and_an_upward_edge():
    g = {"flexicodec.codec.a": {"flexicodec.codec.b": "import"},
         "flexicodec.codec.b": {"flexicodec.codec.a": "import"}}
    assert find_cycle(g) in (["flexicodec.codec.a", "flexicodec.codec.b", "flexicodec.codec.a"],
                             ["flexicodec.codec.b", "flexicodec.codec.a", "flexicodec.codec.b"])
    assert find_cycle({"flexicodec.codec.a": {"flexicodec.common.x": "import"},
                       "flexicodec.common.x": {}}) is None
    up = {"flexicodec.common.x": {"flexicodec.lm.train": "string"},
          "flexicodec.data.y": {"flexicodec.codec.model": "import"},
          "flexicodec.lm.z": {"flexicodec.codec.model": "import"}}
    assert layer_violations(up) == ["flexicodec.common.x -> flexicodec.lm.train (string)",
                                    "flexicodec.data.y -> flexicodec.codec.model (import)"]


def test_checker_reads_imports_and_dispatch_strings_from_source():
    mods = {"flexicodec.common.x", "flexicodec.lm.train", "flexicodec.codec.model",
            "flexicodec.codec.asr", "flexicodec.codec.asr.model", "flexicodec.codec"}
    src = ("import json\n"
           "def f():\n"
           "    from flexicodec.codec.model import FlexiCodec\n"
           "    from flexicodec.codec import asr\n"
           "TABLE = {'t': 'flexicodec.lm.train'}\n"
           "'''a docstring naming flexicodec.lm.train is not an import'''\n")
    got = imports_of(src, "flexicodec.common.x", False, mods)
    assert got == {"flexicodec.codec.model": "import", "flexicodec.codec": "import",
                   "flexicodec.codec.asr": "import", "flexicodec.lm.train": "string"}
    rel = imports_of("from .model import PhonemeASR\n", "flexicodec.codec.asr", True, mods)
    assert rel == {"flexicodec.codec.asr.model": "import"}


# ------------------------------------------------------------------------------------------
# the real package
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def graph():
    g = import_graph()
    assert len(g) > 50
    return g


def test_every_package_folder_is_mapped_and_no_bare_name_is_imported(graph):
    import tomllib

    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert cfg["package-dir"] == {TOP: TOP_FOLDER, **{f"{TOP}.{f}": f for f in LAYERS}}
    subpackages = {m for m, p in package_modules().items() if p.name == "__init__.py"}
    assert set(cfg["packages"]) == subpackages
    assert not (REPO / TOP).exists(), "a flexicodec/ folder at the root shadows the mapping"
    # no module imports an old bare name (codec.x, lm.x, ...)
    bare = []
    for m, p in package_modules().items():
        for node in ast.walk(ast.parse(p.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and not node.level
                     else [])
            bare += [f"{m}: {n}" for n in names
                     if n and n.split(".")[0] in (*LAYERS, "flexicodec_pretrained")]
    assert not bare


def test_no_import_cycles(graph):
    cycle = find_cycle(cycle_graph(graph))
    assert cycle is None, " -> ".join(cycle)


def test_no_import_from_a_lower_layer_into_a_higher_one(graph):
    assert layer_violations(graph) == []


def test_common_imports_no_model_package(graph):
    for src, deps in graph.items():
        if src.startswith(f"{TOP}.common"):
            assert all(d.startswith(f"{TOP}.common") for d in deps), (src, deps)
