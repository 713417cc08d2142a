"""The package's import graph: no import circles, and data flows one way through the layers of docs/architecture.md
(low-level rooms never import a stage, the API or the CLI; the embedding backends never import a stage; a stage
never imports another stage), and a module imports a name from the module that defines it, never through another
that forwards it."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "arxiv_embeddings"

#: Each module's layer, lowest first. A module may import its own layer and those below it, never above.
LAYERS: dict[str, tuple[str, ...]] = {
    "base": (
        "config",
        "io",
        "logging_utils",
        "layout",
        "vectors",
        "texts",
        "ann",
        "data",
        "metrics",
        "losses",
        "samplers",
        "stage",
    ),
    "backends": ("backends",),
    "shared": ("evaluation", "report", "head", "pairing"),
    "stages": (
        "preprocess",
        "pairs",
        "label",
        "train",
        "evaluate",
        "baseline",
        "export",
        "index",
    ),
    "top": ("cli", "api", "publish", "launch", "vertex"),
}
RANK = {module: rank for rank, modules in enumerate(LAYERS.values()) for module in modules}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        out[".".join(p for p in parts if p != "__init__") or "__init__"] = path
    return out


def _imports(path: Path) -> set[str]:
    """Modules of the package that ``path`` imports, at load time or inside functions (TYPE_CHECKING ones too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("arxiv_embeddings"):
            target = node.module.removeprefix("arxiv_embeddings").lstrip(".")
            if target:
                found.add(target)
            else:  # from arxiv_embeddings import pairs, train
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name.removeprefix("arxiv_embeddings.") for a in node.names if a.name.startswith("arxiv_"))
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: {t for t in _imports(path) if t in modules and t != name} for name, path in modules.items()}


def _layer_of(module: str) -> int:
    return RANK[module.split(".")[0]]


def test_every_module_has_a_layer() -> None:
    top_level = {m.split(".")[0] for m in _modules()} - {"__init__"}
    assert top_level == set(RANK), f"new or removed modules: add them to LAYERS ({top_level ^ set(RANK)})"


def test_lower_layers_never_import_higher_ones() -> None:
    wrong = [
        f"{module} ({list(LAYERS)[_layer_of(module)]}) imports {target} ({list(LAYERS)[_layer_of(target)]})"
        for module, targets in _graph().items()
        if module != "__init__"
        for target in sorted(targets)
        if _layer_of(target) > _layer_of(module)
    ]
    assert not wrong, "\n".join(wrong)


def test_a_stage_never_imports_another_stage() -> None:
    """What two stages share lives in a lower room (``evaluation``, ``pairing``, ``ann``, ...), so a stage can be
    read, changed and tested without the others."""
    stages = set(LAYERS["stages"])
    wrong = [
        f"{module} imports {target}"
        for module, targets in _graph().items()
        if module.split(".")[0] in stages
        for target in sorted(targets)
        if target.split(".")[0] in stages and target.split(".")[0] != module.split(".")[0]
    ]
    assert not wrong, "\n".join(wrong)


def test_there_are_no_import_circles() -> None:
    graph = _graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import circles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_checks_see_a_circle_and_an_upward_import(tmp_path: Path) -> None:
    """The graph is read from the source: a planted import shows up in it."""
    planted = tmp_path / "planted.py"
    planted.write_text("def f():\n    from arxiv_embeddings.train import run\n    from arxiv_embeddings import cli\n")
    assert _imports(planted) == {"train", "cli"}


def test_a_module_never_forwards_a_name() -> None:
    """A name has one address, the module that defines it: no module (the packages' ``__init__`` tables aside)
    imports a name of the package ``as`` itself to pass it on."""
    wrong = [
        f"{name}: from {node.module} import {alias.name} as {alias.asname}"
        for name, path in _modules().items()
        if path.name != "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("arxiv_embeddings")
        for alias in node.names
        if alias.asname == alias.name
    ]
    assert not wrong, "\n".join(wrong)
