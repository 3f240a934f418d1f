"""The package's import graph has no cycle, and the README's layout lists the modules in an order
where each imports only those above it (so a reader can take them top to bottom)."""
from __future__ import annotations

import ast

from conftest import ROOT

PACKAGE = ROOT / "onnx_fc2conv"


def _module_of(path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Module -> the package modules it imports (relative or absolute, any depth)."""
    modules = {_module_of(p): p for p in PACKAGE.rglob("*.py")}
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        base = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            parts = base.split(".")[: len(base.split(".")) - max(node.level - 1, 0)] if node.level else []
            target = ".".join(parts + ([node.module] if node.module else []))
            for alias in node.names:
                found = f"{target}.{alias.name}" if f"{target}.{alias.name}" in modules else target
                if found in modules and found != module:
                    edges[module].add(found)
    return edges


def test_the_package_imports_have_no_cycle():
    edges, done, path = _imports(), set(), []

    def visit(module):
        assert module not in path, "import cycle: " + " -> ".join(path[path.index(module):] + [module])
        if module in done:
            return
        path.append(module)
        for target in sorted(edges[module]):
            visit(target)
        path.pop()
        done.add(module)

    for module in sorted(edges):
        visit(module)
    assert len(done) == len(edges) >= 30


def test_the_readme_layout_lists_modules_in_import_order():
    block = (ROOT / "README.md").read_text().split("## Project layout", 1)[1].split("```")[1]
    listed = [line.split()[0].removeprefix("onnx_fc2conv/") for line in block.splitlines()
              if line.startswith("onnx_fc2conv/")]
    position = {"onnx_fc2conv." + name.removesuffix(".py").rstrip("/").replace("/", "."): i for i, name in enumerate(listed)}

    def place(module):  # a module of a listed package (rules/) takes the package's place
        while module not in position and "." in module:
            module = module.rsplit(".", 1)[0]
        return position.get(module)

    edges = _imports()
    unlisted = sorted(m for m in edges if place(m) is None and m != "onnx_fc2conv" and m != "onnx_fc2conv.__main__")
    assert unlisted == []
    upward = sorted((m, t) for m, targets in edges.items() for t in targets
                    if m not in ("onnx_fc2conv", "onnx_fc2conv.__main__") and place(t) > place(m))
    assert upward == []
