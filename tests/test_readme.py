"""Every ```python block of README.md runs as written, each on its own (a fresh namespace, in a
temporary folder). The README is read when the tests run, so blocks added later are run too. A
block that imports an optional package (torch, sklearn, cupy, pandas) is skipped without it."""

from __future__ import annotations

import ast
import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
OPTIONAL = {"torch", "sklearn", "cupy", "pandas", "matplotlib", "mpi4py"}


def python_blocks() -> list[tuple[int, str]]:
    """(first line number, code) of every ```python block."""
    text = README.read_text(encoding="utf-8")
    return [(text.count("\n", 0, match.start(1)) + 1, match.group(1))
            for match in re.finditer(r"^```python[ \t]*\n(.*?)^```", text, flags=re.M | re.S)]


def imported(code: str) -> set[str]:
    """The top-level packages a block imports."""
    names = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
            if node.module.split(".")[0] == "fastnn" and node.module != "fastnn":
                names.add(node.module.split(".")[1])  # fastnn.sklearn, fastnn.integrations.torch
    return names


BLOCKS = python_blocks()


def test_the_readme_has_python_blocks():
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("line,code", BLOCKS, ids=[f"README.md:{line}" for line, _ in BLOCKS])
def test_readme_block_runs(line, code, tmp_path, monkeypatch):
    needs = imported(code)
    for package in sorted(needs & OPTIONAL):
        pytest.importorskip(package)
    if "integrations" in needs and "torch" in code:
        pytest.importorskip("torch")
    monkeypatch.chdir(tmp_path)  # files the block writes land here
    import fastnn

    try:
        exec(compile(code, f"{README}:{line}", "exec"), {"__name__": "__readme__"})
    finally:
        fastnn.seed(None)  # a block may set the global seed
