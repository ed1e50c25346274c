"""The runtime package stays usable on Python 3.9, the oldest the default install supports (pyproject's
``requires-python``): its syntax parses with the 3.9 grammar, and no construct of 3.10+ runs at import
or call time. The dev venv is newer, so these static checks catch what its tests cannot; the real
install on 3.9 is ``test_runtime_env.test_default_install_on_other_pythons``."""

from __future__ import annotations

import ast
import builtins
import re
from pathlib import Path

import pytest

from edge_yolov9.doctor import MIN_PYTHON

pytestmark = pytest.mark.runtime

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = sorted((ROOT / "edge_yolov9").rglob("*.py"))
# Keyword arguments that Python 3.9 lacks: zip(strict=) and dataclass(slots=, kw_only=) are 3.10;
# entry_points(group=) is 3.10 (3.9's entry_points() takes no arguments).
NEW_KEYWORDS = {"zip": {"strict"}, "dataclass": {"slots", "kw_only"}, "entry_points": None}
TYPE_NAMES = {name for name, value in vars(builtins).items() if isinstance(value, type)} | {"ndarray"}


def _call_name(node: ast.Call) -> str:
    return node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")


def _is_type_like(node: ast.expr) -> bool:
    """Whether an operand of ``|`` looks like a type: None, a builtin or capitalized class, a generic."""
    if isinstance(node, ast.Constant):
        return node.value is None
    if isinstance(node, ast.Subscript):
        return True
    name = node.id if isinstance(node, ast.Name) else getattr(node, "attr", "")
    return name in TYPE_NAMES or (name[:1].isupper() and not name.isupper())  # LOCK_EX is a constant


def annotation_nodes(tree: ast.AST) -> set[int]:
    """ids of every node inside an annotation (never evaluated under ``from __future__ import annotations``)."""
    roots = []
    for node in ast.walk(tree):
        if isinstance(node, ast.arg) and node.annotation is not None:
            roots.append(node.annotation)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.returns is not None:
            roots.append(node.returns)
        elif isinstance(node, ast.AnnAssign):
            roots.append(node.annotation)
    return {id(inner) for root in roots for inner in ast.walk(root)}


def py310_constructs(source: str) -> list[str]:
    """What in ``source`` fails on 3.9 at run time though it parses: ``X | Y`` of types outside
    annotations (``isinstance(x, int | None)``, type aliases), and the keywords of NEW_KEYWORDS."""
    tree = ast.parse(source)
    in_annotation = annotation_nodes(tree)
    found = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr) and id(node) not in in_annotation
                and (_is_type_like(node.left) or _is_type_like(node.right))):
            found.append((node.lineno, f"`{ast.unparse(node)}` (a union of types, evaluated at run time)"))
        elif isinstance(node, ast.Call) and _call_name(node) in NEW_KEYWORDS:
            banned = NEW_KEYWORDS[_call_name(node)]
            for keyword in node.keywords:
                if banned is None or keyword.arg in banned:
                    found.append((node.lineno, f"{_call_name(node)}({keyword.arg}=...)"))
    return [f"line {line}: {what}" for line, what in sorted(found)]


def has_annotations(tree: ast.AST) -> bool:
    return any(isinstance(node, ast.AnnAssign) or (isinstance(node, ast.arg) and node.annotation is not None)
               or (isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.returns is not None)
               for node in ast.walk(tree))


@pytest.mark.parametrize("path", RUNTIME, ids=lambda p: p.name)
def test_runtime_module_runs_on_python39(path):
    source = path.read_text()
    tree = ast.parse(source, feature_version=(3, 9))  # a SyntaxError names the line: match, except*, ...
    if has_annotations(tree):
        future = [n for n in tree.body if isinstance(n, ast.ImportFrom) and n.module == "__future__"]
        assert any(alias.name == "annotations" for n in future for alias in n.names), (
            f"{path.name} has annotations but no `from __future__ import annotations` (`X | None` fails on 3.9)")
    assert not py310_constructs(source), f"{path.name}: {py310_constructs(source)}"


def test_the_checker_finds_what_it_looks_for():
    source = ("from dataclasses import dataclass\nAlias = int | None\ndef f(x: int | None) -> str | None:\n"
              "    return isinstance(x, (int, str)) or isinstance(x, str | bytes) or (x | 4)\n"
              "@dataclass(slots=True)\nclass C:\n    a: list[int] | None = None\n"
              "pairs = zip([1], [2], strict=True)\nflags = fcntl.LOCK_EX | fcntl.LOCK_NB\n")
    found = py310_constructs(source)
    assert [line.split(":")[0] for line in found] == ["line 2", "line 4", "line 5", "line 8"], found


def test_requires_python_matches_the_runtime_and_doctor():
    pyproject = (ROOT / "pyproject.toml").read_text()
    lowest = re.search(r'^requires-python\s*=\s*">=(\d+)\.(\d+)"', pyproject, re.M)
    assert lowest and (int(lowest[1]), int(lowest[2])) == MIN_PYTHON
    classifiers = re.findall(r'"Programming Language :: Python :: (3\.\d+)"', pyproject)
    assert classifiers[0] == "%d.%d" % MIN_PYTHON
