"""The lessons' shape, checked without running them (nbval runs them: see the
Makefile's test-notebooks).

Each lesson is saved without outputs (so a diff shows what changed in the
teaching, not in a run), is numbered, ends with a verdict and a clean-up,
and hides the solutions of its exercises in cells that CI runs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
LESSONS = [f"{n:02d}" for n in range(10)]


def cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def source(cell: dict) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def test_every_lesson_is_there_numbered():
    numbers = [p.name[:2] for p in NOTEBOOKS]
    assert numbers == LESSONS, f"expected lessons {LESSONS}, found {[p.name for p in NOTEBOOKS]}"
    assert all(re.fullmatch(r"\d\d-[a-z0-9-]+\.ipynb", p.name) for p in NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_saved_without_outputs(path: Path):
    for i, cell in enumerate(cells(path)):
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [], f"{path.name} cell {i} has outputs: strip them"
            assert cell.get("execution_count") is None, f"{path.name} cell {i} has an execution count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_a_lesson_opens_explains_proves_and_cleans_up(path: Path):
    all_cells = cells(path)
    code = [source(c) for c in all_cells if c["cell_type"] == "code"]
    assert all_cells[0]["cell_type"] == "markdown", "a lesson opens with what the learner will see"
    assert any("assert" in c for c in code), "a lesson proves its claims with asserts"
    assert any("verdict(" in c for c in code), "a lesson ends with a verdict"
    assert any("assert_clean()" in c for c in code), "the verdict is asserted"
    assert "close()" in code[-1], "the last cell cleans up what the lesson started"
    for text in code:
        assert "asyncio.run(" not in text, "never asyncio.run() in a cell: the kernel's loop is running"
        assert "time.sleep(" not in text, "time.sleep blocks the kernel's loop: await asyncio.sleep"


@pytest.mark.parametrize("path", [p for p in NOTEBOOKS if not p.name.startswith("00")], ids=lambda p: p.name)
def test_exercises_have_hidden_solutions_that_run(path: Path):
    solutions = [
        c
        for c in cells(path)
        if c["cell_type"] == "code" and "solution" in c.get("metadata", {}).get("tags", [])
    ]
    assert solutions, f"{path.name} has no exercise with a solution cell"
    for cell in solutions:
        assert cell["metadata"].get("jupyter", {}).get("source_hidden") is True
        assert "raises-exception" not in cell["metadata"].get("tags", [])
        assert "assert" in source(cell), "a solution proves itself"
