"""The wing order, read from the imports (ast), lazy ones and names passed as strings included.

    core        -> nothing above it (core only)
    training    -> core
    mapreduce   -> core
    evaluation  -> core, mapreduce
    bench       -> anything
    tests       -> anything, but no test module imports another (shared helpers live in fakes.py)

summarizer_cli.py (top level) dispatches to the wings only through importlib, by name: it imports
none of them statically. A failure names file:line and the forbidden arrow.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"

# The wing each project top-level name belongs to; test helpers sit on pythonpath as top-level names.
WING_OF = {name: name for name in ("core", "training", "mapreduce", "evaluation", "bench", "tests", "summarizer_cli")}
WING_OF.update({path.stem: "tests" for path in TESTS.glob("*.py")})

ALLOWED = {
    "core": {"core"},
    "training": {"core", "training"},
    "mapreduce": {"core", "mapreduce"},
    "evaluation": {"core", "mapreduce", "evaluation"},
}
IMPORT_CALLS = {"import_module", "__import__", "find_spec"}  # importlib.import_module, importlib.util.find_spec
DOTTED_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")
FILE_NAME = re.compile(r".*\.(py|ya?ml|jsonl?|md|txt|gz)")  # "summarizer_cli.py" is a file, not a module


def imported_names(path: Path) -> list[tuple[int, str, bool]]:
    """(line, module name, by string?) for every import in the file, however deep in a function."""
    found = []
    package = path.parent.name
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, False) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.lineno, package if node.level else node.module or "", False))
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            arg = node.args[0] if node.args else None
            if name in IMPORT_CALLS and isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                found.append((node.lineno, arg.value, True))
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str) and DOTTED_NAME.fullmatch(node.value)
              and not FILE_NAME.fullmatch(node.value)):
            found.append((node.lineno, node.value, True))  # "mapreduce.engine" kept for a later import
    return sorted(set(found))  # an importlib call's argument is also a string constant: once is enough


def project_arrows(path: Path) -> list[tuple[int, str, str, bool]]:
    """(line, target wing, module name, by string?) for each import of a project module."""
    arrows = []
    for line, name, by_string in imported_names(path):
        wing = WING_OF.get(name.split(".")[0])
        if wing is not None:
            arrows.append((line, wing, name, by_string))
    return arrows


def forbidden_arrows(wing: str) -> list[str]:
    allowed = ALLOWED[wing]
    offenders = []
    for path in sorted((REPO / wing).rglob("*.py")):
        for line, target, name, by_string in project_arrows(path):
            if target not in allowed:
                how = f"names {name!r}" if by_string else f"imports {name}"
                offenders.append(f"{path.relative_to(REPO)}:{line}: forbidden arrow {wing} -> {target} ({how}); "
                                 f"{wing} may import only {', '.join(sorted(allowed))}")
    return offenders


@pytest.mark.parametrize("wing", sorted(ALLOWED))
def test_a_wing_imports_only_the_floors_below_it(wing):
    """core -> core; training, mapreduce -> core; evaluation -> core, mapreduce."""
    offenders = forbidden_arrows(wing)
    assert not offenders, "\n".join(offenders)


def test_every_wing_is_checked():
    """Every package folder next to core/ has a rule (or is bench/tests, which may import anything)."""
    packages = {p.parent.name for p in REPO.glob("*/__init__.py")}
    unruled = sorted(packages - set(ALLOWED) - {"bench", "tests"})
    assert not unruled, f"no layering rule for {unruled}: add them to ALLOWED in tests/test_layering.py"


def test_the_scanner_sees_the_known_arrows():
    """Not vacuous: the one arrow up a floor (evaluation -> mapreduce) and a lazy import are found."""
    targets = {target for p in (REPO / "evaluation").glob("*.py") for _, target, _, _ in project_arrows(p)}
    assert {"core", "mapreduce"} <= targets
    cli = [(target, name) for _, target, name, by_string in project_arrows(REPO / "summarizer_cli.py") if by_string]
    assert ("training", "training.train") in cli


def test_summarizer_cli_reaches_the_wings_only_through_importlib():
    offenders = [f"summarizer_cli.py:{line}: forbidden arrow summarizer_cli -> {target} (imports {name}); "
                 "dispatch by name through importlib.import_module"
                 for line, target, name, by_string in project_arrows(REPO / "summarizer_cli.py") if not by_string]
    assert not offenders, "\n".join(offenders)


def test_no_test_module_imports_another():
    offenders = [f"tests/{path.name}:{line}: forbidden arrow {path.stem} -> {name}; "
                 "put shared helpers in tests/fakes.py (or fixtures in conftest.py)"
                 for path in sorted(TESTS.glob("*.py"))
                 for line, _, name, _ in project_arrows(path)
                 if name.split(".")[0].startswith("test_")]
    assert not offenders, "\n".join(offenders)
