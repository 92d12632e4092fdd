"""The layering of docs/architecture.md, checked: imports point down, no cycles, short functions."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "elastictok"

# Bottom-up; a module may import only from its own layer or a lower one.
LAYERS = ["errors", "utils", "layers", "metrics", "models", "media", "tokenization", "training", "evaluation", "cli"]
MAX_FUNCTION_LINES = 60
# The one import from a higher layer, by name: model.tokenize / model.detokenize are sugar for the tokenizer's
# functions, imported inside the methods when first called (docs/architecture.md).
ALLOWED_UPWARD = {("elastictok.models.base", "elastictok.tokenization.tokenizer")}


def module_name(path: Path) -> str:
    parts = ("elastictok",) + path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def layer_of(module: str) -> int:
    """The rank of a module's layer; the package root and its API (public re-exports) sit above everything."""
    parts = module.split(".")
    return len(LAYERS) if len(parts) == 1 or parts[1] == "_api" else LAYERS.index(parts[1])


def imports_of(module: str) -> set[str]:
    """Every elastictok module ``module`` imports, at any depth (lazy and TYPE_CHECKING imports too)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "elastictok")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif (node.module or "").split(".")[0] == "elastictok":
                target = node.module
            else:
                continue
            submodules = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in MODULES]
            found.update(submodules or [target])
    return {m for m in found if m in MODULES and m != module}


GRAPH = {m: imports_of(m) for m in MODULES}


def test_every_package_is_a_known_layer():
    assert {m.split(".")[1] for m in MODULES if m.count(".")} <= set(LAYERS) | {"_api"}


def test_imports_point_down():
    upward = [f"{m} imports {t}" for m, targets in GRAPH.items() for t in targets
              if layer_of(t) > layer_of(m) and (m, t) not in ALLOWED_UPWARD]
    assert not upward, "\n".join(sorted(upward))


def test_no_module_is_imported_by_a_string():
    """``importlib.import_module`` and ``__import__`` hide an import from the checks above."""
    hidden = [f"{m}: {ast.unparse(node)}" for m, path in MODULES.items() for node in ast.walk(ast.parse(path.read_text()))
              if isinstance(node, ast.Call) and ast.unparse(node.func) in ("importlib.import_module", "__import__")
              and not (m == "elastictok" and ast.unparse(node.args[0]).startswith("f'.{"))]
    assert not hidden, "\n".join(hidden)


def test_nothing_above_models_asks_which_family_a_model_is():
    """Families differ only by what they declare (``models.base.ModelFamily``): above ``models/`` no code probes
    with ``hasattr``, compares a ``family`` with a name, or names a family (its display name or its FlexTok key;
    "elastictok" is also the package's name)."""
    names = {"flextok", "FlexTok", "ElasticTok"}
    probes = []
    for module, path in MODULES.items():
        if module.count(".") < 1 or layer_of(module) <= LAYERS.index("models") or layer_of(module) == len(LAYERS):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "hasattr" \
                    and ast.unparse(node.args[0]) not in ("os", "signal", "sys", "torch"):  # modules, not models
                probes.append(f"{module}: {ast.unparse(node)}")
            elif isinstance(node, ast.Compare) and "family" in ast.unparse(node) \
                    and any(isinstance(side, ast.Constant) for side in [node.left, *node.comparators]):
                probes.append(f"{module}: {ast.unparse(node)}")
            elif isinstance(node, ast.Constant) and node.value in names:
                probes.append(f"{module}: the name {node.value!r}")
    assert not probes, "\n".join(probes)


def test_no_import_cycles():
    """No module reaches itself through imports (a package __init__ importing its own modules is fine)."""
    cycles = []

    def reachable(start: str) -> set[str]:
        seen, stack = set(), [start]
        while stack:
            for nxt in GRAPH[stack.pop()]:
                if nxt not in seen and not start.startswith(nxt + "."):  # importing a parent package runs its __init__
                    seen.add(nxt)
                    stack.append(nxt)
        return seen

    for module in GRAPH:
        if MODULES[module].name != "__init__.py" and module in reachable(module):
            cycles.append(module)
    assert not cycles, f"modules on an import cycle: {sorted(cycles)}"


def test_no_long_functions():
    long = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{module}.{node.name}: {lines} lines")
    assert not long, "\n".join(long)
