"""Room sizes: no source file in the wings over 400 lines, no function over 60 (read with ast).

A file that grows past the limit is split along its own section banners; a function, into named
steps. bench/, tests/ and summarizer_cli.py are not held to this.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WINGS = ("core", "training", "evaluation", "mapreduce")
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60


def sources() -> list[Path]:
    return sorted(path for wing in WINGS for path in (REPO / wing).rglob("*.py"))


def test_the_wings_have_sources():
    assert {path.parent.name for path in sources()} >= set(WINGS)


def test_no_file_is_over_400_lines():
    lengths = ((path, len(path.read_text().splitlines())) for path in sources())
    over = [f"{path.relative_to(REPO)}: {n} lines (limit {MAX_FILE_LINES})" for path, n in lengths if n > MAX_FILE_LINES]
    assert not over, "split along the file's own sections:\n" + "\n".join(over)


def test_no_function_is_over_60_lines():
    over = []
    for path in sources():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1  # from `def` to the last line, decorators not counted
                if n > MAX_FUNCTION_LINES:
                    over.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.name} is {n} lines "
                                f"(limit {MAX_FUNCTION_LINES})")
    assert not over, "split into named steps:\n" + "\n".join(over)
