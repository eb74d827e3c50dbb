"""An import-linter contract type for the one rule import-linter cannot state itself (docs/design.md, rule 5):

* no import of a module of the package inside a function -- function-level imports are for optional heavy
  third-party dependencies (matplotlib, peft, tensorboard, ...), never a way to dodge an import cycle;
* no `from x import _name` of another module's private name.

Registered in pyproject.toml ([tool.importlinter] contract_types) and checked by `make test` (`lint-imports`).
"""

from __future__ import annotations

import ast
import importlib.util

from importlinter import Contract, ContractCheck, fields, output


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module name a (possibly relative) `from ... import` refers to."""
    if not node.level:
        return node.module or ""
    parts = module.split(".")
    base = parts if is_package else parts[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def violations(module: str, root: str) -> list[str]:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return []
    source = open(spec.origin, encoding="utf-8").read()
    tree = ast.parse(source, filename=spec.origin)
    is_package = spec.origin.endswith("__init__.py")
    found = []
    functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))]
    inside = {id(n) for f in functions for n in ast.walk(f) if n is not f}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            target = _resolve(module, is_package, node)
            internal = target == root or target.startswith(root + ".")
            if internal and id(node) in inside:
                found.append(f"{module}:{node.lineno} imports {target} inside a function")
            for alias in node.names:
                if internal and alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append(f"{module}:{node.lineno} imports the private name {target}.{alias.name}")
        elif isinstance(node, ast.Import) and id(node) in inside:
            for alias in node.names:
                if alias.name == root or alias.name.startswith(root + "."):
                    found.append(f"{module}:{node.lineno} imports {alias.name} inside a function")
    return found


class NoHiddenImportsContract(Contract):
    """Configuration: `root` -- the package whose modules are checked (and whose imports count as internal)."""

    root = fields.StringField()

    def check(self, graph, verbose: bool) -> ContractCheck:
        root = str(self.root)
        found = [v for module in sorted(graph.modules) if module == root or module.startswith(root + ".")
                 for v in violations(module, root)]
        return ContractCheck(kept=not found, metadata={"violations": found})

    def render_broken_contract(self, check: ContractCheck) -> None:
        for line in check.metadata["violations"]:
            output.print_error(line, bold=False)
            output.new_line()
