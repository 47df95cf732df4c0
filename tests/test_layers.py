"""The package's layers are its folders, and every import runs downward (../shared/STYLE.md): runtime at the bottom,
then methods (the maths), inputs, engine (the batched model work the Python API exposes), commands, the lab, control,
and the CLI and public API at the top. No module imports another in a circle, lazily or not."""

import ast
import pathlib

import opsft

PACKAGE = pathlib.Path(opsft.__file__).parent
LAYERS = ["runtime", "methods", "inputs", "engine", "commands", "lab", "control"]  # bottom to top; the top level last


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: pathlib.Path) -> set[str]:
    """The opsft modules `path` imports, at the top or inside a function: `from X import name` counts as X.name
    where that is a module, else X."""
    name, modules = module_name(path), set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names if alias.name.startswith("opsft")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            if not base.startswith("opsft"):
                continue
            for alias in node.names:
                modules.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return modules - {name}


def layer(module: str) -> int:
    part = module.split(".")[1] if module.count(".") else ""
    return LAYERS.index(part) if part in LAYERS else len(LAYERS)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def test_every_module_lives_in_a_layer_folder():
    loose = [m for m in MODULES if layer(m) == len(LAYERS) and m not in ("opsft", "opsft.cli")]
    assert not loose, f"modules outside the layer folders: {loose}"


def test_every_import_runs_downward():
    upward = [f"{m} ({LAYERS[layer(m)] if layer(m) < len(LAYERS) else 'top'}) imports {i}"
              for m, path in MODULES.items() for i in imports_of(path) if layer(i) > layer(m)]
    assert not upward, "\n".join(upward)


def test_no_module_imports_another_in_a_circle():
    graph = {m: {i for i in imports_of(p) if i in MODULES and not MODULES[i].name == "__init__.py"}
             for m, p in MODULES.items()}
    done, path, circles = set(), [], []

    def visit(m):
        if m in path:
            circles.append(path[path.index(m):] + [m])
            return
        if m in done:
            return
        path.append(m)
        for i in sorted(graph[m]):
            visit(i)
        path.pop()
        done.add(m)

    for m in sorted(graph):
        visit(m)
    assert not circles, "\n".join(" -> ".join(c) for c in circles)
