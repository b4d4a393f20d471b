"""Imports inside pynn go one direction only (docs: ARCHITECTURE.md).

Every module of pynn/ is parsed with ``ast`` (imports inside function bodies
count as much as those at the top), and the Python-level ``import`` lines of
the Cython sources under pynn/_kernels (not their ``cimport``s) are read as
text. The resulting module graph must have no cycle, and no module may import
one from a layer above its own in ``LAYERS``. Methods of a lower object that
are implemented higher up (``Sequential.save``, ``Sequential.fit``, pickling)
reach their implementation through ``pynn._hooks`` instead of an import."""
import ast
import pathlib
import re

import pytest

PACKAGE_ROOT = pathlib.Path(__file__).resolve().parent.parent / "pynn"

# Bottom up. A module may import modules of its own layer or of a layer below.
# A name ending in ".*" covers every module below that package.
LAYERS = [
    ("input checks", ["pynn._version", "pynn._checks", "pynn._hooks",
                      # the bundled data sets read files with numpy alone
                      "pynn.datasets", "pynn.datasets.*"]),
    # config reports and sets what the kernels' runtime holds, so it sits on it
    ("kernels", ["pynn._kernels", "pynn._kernels.*", "pynn.config"]),
    ("ops", ["pynn.ops", "pynn.ops.*", "pynn.init"]),
    ("layers", ["pynn.layers", "pynn.layers.*", "pynn.losses"]),
    ("models", ["pynn.schedule", "pynn.sequential", "pynn.model"]),
    ("optim", ["pynn.optim", "pynn.optim.*"]),
    ("io", ["pynn.architecture", "pynn.io"]),
    ("training", ["pynn.training", "pynn.callbacks", "pynn.baselines"]),
    ("integrations", ["pynn.distributed", "pynn.demo", "pynn.bench", "pynn.bench.*",
                      "pynn.onnx", "pynn.onnx.*",
                      "pynn.__main__", "pynn"]),
]

_PYX_IMPORT = re.compile(r"^\s*(?:import\s+([\w.]+(?:\s*,\s*[\w.]+)*)|from\s+([\w.]+)\s+import\b)")


def layer_of(module):
    """Index in LAYERS of ``module``: an exact name first, else the longest
    package pattern covering it; None when the table does not place it."""
    best, best_length = None, -1
    for index, (_, names) in enumerate(LAYERS):
        for name in names:
            if name == module:
                return index
            if name.endswith(".*") and module.startswith(name[:-1]) and len(name) > best_length:
                best, best_length = index, len(name)
    return best


def module_name(path, root):
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules(root):
    """name -> path for every Python module and Cython source under ``root``."""
    found = {}
    for path in sorted(root.rglob("*")):
        if path.suffix in (".py", ".pyx", ".pxi") and "__pycache__" not in path.parts:
            found[module_name(path, root)] = path
    return found


def _python_imports(path, name):
    """(imported name, line, candidate submodule or None) for every import statement."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno, None
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            for alias in node.names:
                yield target, node.lineno, f"{target}.{alias.name}"


def _cython_imports(path):
    """The Python-level imports of a .pyx/.pxi file: ``import x`` and
    ``from x import y`` lines (``cimport`` lines are compile-time only)."""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        match = _PYX_IMPORT.match(line)
        if match is None:
            continue
        if match.group(1):
            for target in match.group(1).split(","):
                yield target.strip(), number, None
        else:
            rest = line[match.end():]
            names = re.findall(r"\w+", rest.split("#")[0])
            yield match.group(2), number, None
            for alias in names:
                if alias != "as":
                    yield match.group(2), number, f"{match.group(2)}.{alias}"


def import_graph(root=PACKAGE_ROOT):
    """{importer: {imported: (file, line)}} over pynn's own modules."""
    modules = _modules(root)
    graph = {name: {} for name in modules}
    for name, path in modules.items():
        imports = _python_imports(path, name) if path.suffix == ".py" else _cython_imports(path)
        for target, line, submodule in imports:
            if submodule in modules:  # from package import submodule
                target = submodule
            if target != name and (target == "pynn" or target.startswith("pynn.")):
                graph[name].setdefault(target, (path, line))
    return graph


def find_cycles(graph):
    """Every strongly connected component of more than one module, each as one
    cycle through it written ``a -> b -> ... -> a``."""
    index, lowlink, on_stack, stack, components = {}, {}, set(), [], []

    def visit(node):
        index[node] = lowlink[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in graph.get(node, ()):
            if successor not in graph:
                continue
            if successor not in index:
                visit(successor)
                lowlink[node] = min(lowlink[node], lowlink[successor])
            elif successor in on_stack:
                lowlink[node] = min(lowlink[node], index[successor])
        if lowlink[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    cycles = []
    for component in components:
        start = min(component)
        path, seen, node = [start], {start}, start
        while True:  # walk inside the component until a module repeats
            node = min(successor for successor in graph[node] if successor in component)
            path.append(node)
            if node in seen:
                break
            seen.add(node)
        cycle = " -> ".join(path[path.index(node):])
        cycles.append(f"{cycle}  (modules importing one another: {', '.join(sorted(component))})")
    return cycles


def upward_imports(graph):
    problems = []
    for importer, targets in sorted(graph.items()):
        level = layer_of(importer)
        for target, (path, line) in sorted(targets.items()):
            target_level = layer_of(target)
            if target_level is not None and level is not None and target_level > level:
                problems.append(f"{path.relative_to(PACKAGE_ROOT.parent)}:{line}: {importer} "
                                f"({LAYERS[level][0]}) imports {target} ({LAYERS[target_level][0]})")
    return problems


def test_the_parser_sees_every_kind_of_import(tmp_path):
    root = tmp_path / "pynn"
    (root / "sub").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "sub" / "__init__.py").write_text("from . import inner\n")
    (root / "sub" / "inner.py").write_text("def f():\n    from ..top import g\n    import pynn.sub\n")
    (root / "top.py").write_text("from pynn.sub import inner\n")
    (root / "kernel.pyx").write_text("from pynn.top cimport x\nfrom pynn.top import (g,\n    h)\n"
                                     "cimport numpy\nimport pynn.sub, pynn.sub.inner\n")
    graph = import_graph(root)
    assert set(graph["pynn.sub"]) == {"pynn.sub.inner"}
    assert set(graph["pynn.sub.inner"]) == {"pynn.top", "pynn.sub"}
    assert set(graph["pynn.top"]) == {"pynn.sub.inner"}
    assert set(graph["pynn.kernel"]) == {"pynn.top", "pynn.sub", "pynn.sub.inner"}
    cycles = find_cycles(graph)
    assert len(cycles) == 1
    cycle = cycles[0].split("  (")[0].split(" -> ")
    assert cycle[0] == cycle[-1] and set(cycle) <= {"pynn.sub", "pynn.sub.inner", "pynn.top"}
    assert cycles[0].endswith("(modules importing one another: pynn.sub, pynn.sub.inner, pynn.top)")


def test_every_module_has_a_layer():
    unplaced = [name for name in import_graph() if layer_of(name) is None]
    assert not unplaced, f"add these modules to LAYERS in {__file__}: {unplaced}"


def test_no_import_cycle():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles in pynn/:\n" + "\n".join(cycles)


def test_no_module_imports_a_layer_above_its_own():
    problems = upward_imports(import_graph())
    assert not problems, "imports against the direction of LAYERS:\n" + "\n".join(problems)


def test_every_hook_is_installed_by_its_module():
    import pynn  # noqa: F401  (installs every hook)
    from pynn import _hooks

    for name, provider in _hooks._PROVIDERS.items():
        implementation = _hooks.get(name, "test")
        assert implementation.__module__ == provider, name


def test_a_missing_hook_names_the_module_to_import(monkeypatch):
    import pynn
    from pynn import _hooks

    monkeypatch.setattr(_hooks, "_installed", {})
    model = pynn.Sequential(pynn.layers.Linear(2, 1))
    with pytest.raises(RuntimeError, match=r"Sequential.save is implemented in pynn.io"):
        model.save("unused.safetensors")
    with pytest.raises(RuntimeError, match=r"Sequential.fit is implemented in pynn.training"):
        model.fit([[0.0, 1.0]], [[1.0]], loss=pynn.losses.MSELoss(),
                  optimizer=pynn.optim.SGD(model, lr=0.1))
    with pytest.raises(ValueError, match="unknown hook 'sav'"):
        _hooks.install("sav", print)
