"""The package's import graph: no import circles, and data flows one way through the layers of docs/architecture.md
(low-level rooms never import a stage, the API or the CLI; the embedding backends never import a stage; a stage
never imports another stage). One address per name: a module imports a name from the module that defines it, never
through another that forwards it (no re-export table in a package ``__init__``, no ``__all__`` of names defined
elsewhere, no module-level ``__getattr__``), and never takes another module's underscore (private) name."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "arxiv_embeddings"

ARCHITECTURE = PACKAGE.parents[1] / "docs" / "architecture.md"
LAYER_NAMES = ("top", "stages", "shared", "backends", "base")


def layers_of(text: str) -> dict[str, tuple[str, ...]]:
    """Each layer's modules as the layer diagram of docs/architecture.md draws them, lowest layer first: the one
    place the ownership list lives. A layer's line starts with its name; an indented line continues it; a
    parenthesized list names a package's inner modules and is skipped."""
    import re

    block = text.split("```", 2)[1]
    layers: dict[str, list[str]] = {}
    current = None
    for line in block.splitlines():
        words = re.sub(r"\([^)]*\)", " ", line).split()
        if not words or words == ["│"]:
            continue
        if words[0] in LAYER_NAMES:
            current, words = words[0], words[1:]
        assert current is not None, f"docs/architecture.md: a diagram line before any layer: {line!r}"
        layers.setdefault(current, []).extend(w.rstrip("/") for w in words)
    assert tuple(layers) == LAYER_NAMES, f"docs/architecture.md draws the layers {list(layers)}"
    return {name: tuple(layers[name]) for name in reversed(LAYER_NAMES)}


#: Each module's layer, lowest first, from docs/architecture.md. A module may import its own layer and those below
#: it, never above.
LAYERS = layers_of(ARCHITECTURE.read_text(encoding="utf-8"))
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
    assert top_level == set(RANK), (
        f"new or removed modules: draw them in docs/architecture.md ({top_level ^ set(RANK)})"
    )


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
    """What two stages share lives in a lower room (``evaluation``, ``pair_format``, ``ann``, ...), so a stage can be
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
    """A name has one address, the module that defines it: no module imports a name of the package ``as`` itself to
    pass it on."""
    wrong = [
        f"{name}: from {node.module} import {alias.name} as {alias.asname}"
        for name, path in _modules().items()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("arxiv_embeddings")
        for alias in node.names
        if alias.asname == alias.name and alias.name not in ENTRY_POINTS.get(name, ())
    ]
    assert not wrong, "\n".join(wrong)


# ------------------------------------------------------------------------------------------ one address per name
#: Names a package imports only so that a public entry point can name the package: ``uvicorn
#: arxiv_embeddings.api:create_app --factory`` (docs/api.md). Nothing else of the package imports them from there.
ENTRY_POINTS: dict[str, tuple[str, ...]] = {"api": ("create_app",)}


def _module_level(tree: ast.Module) -> Iterator[ast.stmt]:
    """The statements a module runs when it is imported: its body, and the bodies of its module-level ``if``
    (``if TYPE_CHECKING:``), ``try`` and ``with`` blocks; not the bodies of its functions and classes."""
    pending: list[ast.stmt] = list(tree.body)
    while pending:
        node = pending.pop(0)
        yield node
        if isinstance(node, ast.If | ast.With):
            pending[:0] = [*node.body, *getattr(node, "orelse", [])]
        elif isinstance(node, ast.Try):
            pending[:0] = [*node.body, *(s for h in node.handlers for s in h.body), *node.orelse, *node.finalbody]


def _package_imports(node: ast.stmt) -> list[ast.alias]:
    """The names ``node`` imports from a module of the package (absolute or relative), ``*`` included."""
    if isinstance(node, ast.ImportFrom) and (node.level > 0 or (node.module or "").startswith("arxiv_embeddings")):
        return list(node.names)
    return []


def private_imports(source: str, module: str) -> list[str]:
    """The underscore names (``_name``, not ``__dunder__``) that ``source``, the module ``module`` of the package,
    takes from another module of the package: ``from arxiv_embeddings.x import _name``, or ``x._name`` read off a
    name it imported from the package."""
    tree = ast.parse(source)
    wrong, imported = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and _package_imports(node):
            target = (node.module or "").removeprefix("arxiv_embeddings").lstrip(".")
            for alias in node.names:
                imported.add(alias.asname or alias.name)
                if _is_private(alias.name) and target != module:
                    wrong.append(f"from {_source(node)} import {alias.name}")
        elif isinstance(node, ast.Import):
            imported.update(
                (a.asname or a.name.split(".")[0]) for a in node.names if a.name.startswith("arxiv_embeddings")
            )
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _is_private(node.attr):
            base = node.value
            while isinstance(base, ast.Attribute) and not _is_private(base.attr):
                base = base.value
            if isinstance(base, ast.Name) and base.id in imported:
                wrong.append(f"{ast.unparse(node)} (line {node.lineno})")
    return wrong


def _source(node: ast.stmt) -> str:
    """The module an ``ImportFrom`` names, as written (``arxiv_embeddings.x``, ``.x``)."""
    assert isinstance(node, ast.ImportFrom)
    return "." * node.level + (node.module or "")


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def re_exports(source: str, package_init: bool, allowed: tuple[str, ...] = ()) -> list[str]:
    """How ``source`` passes on names that other modules define (``allowed`` aside):

    - a package ``__init__`` (``package_init``) imports a name of the package at import time that it never uses
      itself, only to make it importable from the package (``if TYPE_CHECKING:`` imports included);
    - ``__all__`` lists a name the module does not define;
    - a module-level ``__getattr__``: a lazy table that hands out names defined elsewhere."""
    tree = ast.parse(source)
    top = list(_module_level(tree))
    defined = {n.name for n in top if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)}
    for node in top:
        targets = (
            node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        )
        defined.update(t.id for t in targets if isinstance(t, ast.Name))
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Store)}
    wrong = []
    if package_init:
        wrong += [
            f"imports {alias.asname or alias.name} from {_source(node)} only to re-export it"
            for node in top
            for alias in _package_imports(node)
            if (alias.asname or alias.name) not in used and (alias.asname or alias.name) not in allowed
        ]
    for node in top:
        targets = node.targets if isinstance(node, ast.Assign) else []
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets) and isinstance(
            node.value, ast.List | ast.Tuple
        ):
            wrong += [
                f"__all__ lists {e.value}, defined elsewhere"
                for e in node.value.elts
                if isinstance(e, ast.Constant) and e.value not in defined and e.value not in allowed
            ]
        if isinstance(node, ast.FunctionDef) and node.name == "__getattr__":
            wrong.append("a module-level __getattr__ (a lazy table of names defined elsewhere)")
    return wrong


def test_no_underscore_name_crosses_a_module() -> None:
    """A module's underscore names are its own: what a neighbour needs is public (no underscore)."""
    wrong = [
        f"{name}: {found}"
        for name, path in _modules().items()
        for found in private_imports(path.read_text(encoding="utf-8"), name)
    ]
    assert not wrong, "\n".join(wrong)


def test_no_module_re_exports_names_defined_elsewhere() -> None:
    """A package's ``__init__`` holds its docstring (and what it defines itself), not a table of its modules' names;
    callers import a name from the module that defines it (``arxiv_embeddings.train.stage.run``)."""
    wrong = [
        f"{name}: {found}"
        for name, path in _modules().items()
        for found in re_exports(
            path.read_text(encoding="utf-8"), path.name == "__init__.py", ENTRY_POINTS.get(name, ())
        )
    ]
    assert not wrong, "\n".join(wrong)


def test_the_entry_points_are_what_their_packages_import() -> None:
    """The exceptions stay true: each package of ENTRY_POINTS imports the names listed (else drop them)."""
    modules = _modules()
    for package, names in ENTRY_POINTS.items():
        found = re_exports(modules[package].read_text(encoding="utf-8"), True)
        assert all(any(f"imports {n} " in f for f in found) for n in names), (package, found)


def test_the_checks_see_a_private_import_and_a_re_export_table() -> None:
    """Seeded violations: each check fails on them, and passes the same code written the way it should be."""
    # An underscore name taken from another module, by import or as an attribute of an imported module.
    assert private_imports("from arxiv_embeddings.train.trainer import _trainer_class\n", "train.stage") == [
        "from arxiv_embeddings.train.trainer import _trainer_class"
    ]
    assert private_imports("from .trainer import _training_args, trainer_class\n", "train.stage") == [
        "from .trainer import _training_args"
    ]
    seeded = "from arxiv_embeddings.train import trainer\n\ndef f():\n    return trainer._without_autocast(1)\n"
    assert private_imports(seeded, "train.stage") == ["trainer._without_autocast (line 4)"]
    for fine in (
        "from arxiv_embeddings.train.trainer import trainer_class\n",
        "from arxiv_embeddings.train import trainer\n\ntrainer.trainer_class()\n",
        "import numpy as np\n\nnp._private = 1\n",  # not a module of the package
        "from arxiv_embeddings.train.trainer import __doc__\n",  # a dunder name is no private name
        "def _mine():\n    pass\n\n_mine()\n",  # a module's own underscore names
    ):
        assert private_imports(fine, "train.stage") == [], fine

    # A re-export table: names imported into a package __init__ to be imported from there, eagerly or for the
    # type checker with a lazy __getattr__, or listed in __all__.
    assert re_exports("from arxiv_embeddings.train.stage import run as run\n", package_init=True) == [
        "imports run from arxiv_embeddings.train.stage only to re-export it"
    ]
    table = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from arxiv_embeddings.index.search import PaperIndex\n"
        "_HOMES = {'PaperIndex': 'arxiv_embeddings.index.search'}\n"
        "__all__ = sorted(_HOMES)\n"
        "def __getattr__(name):\n"
        "    import importlib\n"
        "    return getattr(importlib.import_module(_HOMES[name]), name)\n"
    )
    assert re_exports(table, package_init=True) == [
        "imports PaperIndex from arxiv_embeddings.index.search only to re-export it",
        "a module-level __getattr__ (a lazy table of names defined elsewhere)",
    ]
    listed = (
        "from arxiv_embeddings.report import compare\n\n__all__ = ['run', 'compare']\n\ndef run():\n    compare()\n"
    )
    assert re_exports(listed, package_init=False) == ["__all__ lists compare, defined elsewhere"]
    assert re_exports("from .stage import main as main\n", package_init=True) == [
        "imports main from .stage only to re-export it"
    ]
    # The same modules done right: a docstring, what the module defines and uses, an allowed entry point.
    for fine, init in (
        ('"""train: fine-tune a model."""\n', True),
        ("from arxiv_embeddings.vectors import normalize_rows\n\ndef f(x):\n    return normalize_rows(x)\n", True),
        ("__all__ = ['run']\n\ndef run():\n    pass\n", False),
        ("from arxiv_embeddings.train.stage import run\n", False),  # a plain module: ruff flags an unused import
    ):
        assert re_exports(fine, package_init=init) == [], fine
    entry = "from arxiv_embeddings.api.app import create_app\n\n__all__ = ['create_app']\n"
    assert re_exports(entry, True, allowed=("create_app",)) == []
    assert len(re_exports(entry, True)) == 2


def test_every_module_of_the_diagram_has_an_owner_row() -> None:
    """The ownership table of docs/architecture.md names each module (or package) the diagram draws."""
    text = ARCHITECTURE.read_text(encoding="utf-8")
    rows = [line.split("|")[1] for line in text.splitlines() if line.startswith("| `")]
    named = {name.rstrip("/") for row in rows for name in row.replace("`", " ").replace(",", " ").split()}
    missing = sorted(m for modules in LAYERS.values() for m in modules if m not in named)
    assert not missing, f"modules without a row in docs/architecture.md's 'Who owns what': {missing}"


def test_the_layer_diagram_parser_reads_continuations_and_skips_inner_modules() -> None:
    drawn = "```\n  top   cli  api/ (app, service)\n        compare\n    │\n  stages  train/\n  shared report\n  backends backends/\n  base  io\n```"
    assert layers_of(drawn) == {
        "base": ("io",),
        "backends": ("backends",),
        "shared": ("report",),
        "stages": ("train",),
        "top": ("cli", "api", "compare"),
    }
