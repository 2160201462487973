"""The floors: core/ imports nothing from the wings above it, not even by name; training/ only core/."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
UPPER = ("training", "evaluation", "mapreduce", "summarizer_cli")


def _offenders(folder: str, forbidden: tuple[str, ...]) -> list[str]:
    offenders = []
    for path in sorted((REPO / folder).glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                names = [node.value] if node.value.split(".")[0] in forbidden and " " not in node.value else []
            else:
                continue
            offenders += [f"{path.name}:{node.lineno}: {n}" for n in names if n.split(".")[0] in forbidden]
    return offenders


def test_core_imports_nothing_above_it():
    offenders = _offenders("core", UPPER)
    assert not offenders, offenders


def test_training_imports_only_core():
    offenders = _offenders("training", ("evaluation", "mapreduce", "summarizer_cli"))
    assert not offenders, offenders
