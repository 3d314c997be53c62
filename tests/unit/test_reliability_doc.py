"""docs/reliability.md names, in the last column of every table row, tests that exist (no code, no prose)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "reliability.md"
#: ``tests/integration/test_datastore.py` (D)``: a test file and the letter rows use for it.
LEGEND = re.compile(r"`(?:tests/(integration|unit)/)?(test_\w+\.py)` \(([A-Z]{1,2})\)")
#: In a row's last cell: a file letter, a backticked test name (a parametrized id allowed), or "fixture(s)".
TOKEN = re.compile(r"(?<![\w`])([A-Z]{1,2})(?= `)|`(test_\w+)(?:\[[^\]]*\])?`|\b(fixtures?)\b|`([^`]+)`")


def _functions(path: Path) -> dict[str, ast.FunctionDef]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {node.name: node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}


def _is_fixture(node: ast.FunctionDef) -> bool:
    return any("fixture" in ast.unparse(decorator) for decorator in node.decorator_list)


def _rows(text: str) -> list[tuple[int, str]]:
    """(line number, last cell) of every table body row: not the header, not the ``---`` line."""
    rows = []
    lines = text.splitlines()
    for number, line in enumerate(lines, 1):
        if not line.startswith("|") or set(line) <= set("|- "):
            continue
        if number < len(lines) and set(lines[number]) <= set("|- ") and lines[number].startswith("| ---"):
            continue  # a header row
        rows.append((number, line.rstrip().rstrip("|").rsplit("|", 1)[1].strip()))
    return rows


def test_every_row_of_the_reliability_page_names_tests_that_exist() -> None:
    text = DOC.read_text(encoding="utf-8")
    files = {}
    folder = "integration"  # the legend names the folder where it changes; files without one are in the last
    for named_folder, name, letter in LEGEND.findall(text):
        folder = named_folder or folder
        files[letter] = _functions(REPO / "tests" / folder / name)
    fixtures = {name for name, node in _functions(REPO / "tests" / "integration" / "conftest.py").items()
                if _is_fixture(node)}
    problems = []
    rows = _rows(text)
    assert len(rows) > 40, "the page's tables were not found"
    for number, cell in rows:
        letter, in_fixtures, named = None, False, 0
        for file_letter, test, fixture_word, other in TOKEN.findall(cell):
            if file_letter:
                letter, in_fixtures = file_letter, False
            elif fixture_word:
                in_fixtures = True
            elif test and not in_fixtures:
                named += 1
                if letter not in files:
                    problems.append(f"line {number}: {test} has no file letter from the legend before it")
                elif test not in files[letter]:
                    problems.append(f"line {number}: {test} is not a test in the file of letter {letter}")
            elif (test or other) and in_fixtures:
                named += 1
                if (test or other) not in fixtures:
                    problems.append(f"line {number}: fixture {test or other} is not in tests/integration/conftest.py")
            elif other:
                problems.append(f"line {number}: `{other}` is named where a test belongs")
        if not named:
            problems.append(f"line {number}: the row names no test: {cell!r}")
    assert not problems, "docs/reliability.md:\n" + "\n".join(problems)
