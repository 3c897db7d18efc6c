"""Every ```python block of README.md and docs/*.md runs as written.

The blocks of one file run in order in one fresh namespace (later blocks build
on earlier ones), with the working directory in a temporary folder, so
nothing is written into the source tree; matplotlib draws with Agg. A block
preceded by the line ``<!-- not-run: reason -->`` is only checked for syntax;
keep those few.

The blocks run in this process (a subprocess per file spent four seconds of
each file's time importing torch and Quantus) with one torch thread, as the
runner runs every unit: on a machine shared with other processes, two OpenMP
threads per process made small trainings over ten times slower.
"""

from __future__ import annotations

import ast
import re
import warnings
from pathlib import Path
from typing import NamedTuple

import matplotlib
import pytest

matplotlib.use("Agg")

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NOT_RUN = re.compile(r"^\s*<!--\s*not-run:(?P<reason>.*?)-->\s*$")


class Block(NamedTuple):
    line: int                 # 1-based line of the block's first code line
    code: str
    not_run: str | None       # the reason given in <!-- not-run: ... -->, or None


def python_blocks(text: str) -> list[Block]:
    """The ```python blocks of a Markdown text, in order."""
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            start = i + 1
            end = start
            while end < len(lines) and lines[end].strip() != "```":
                end += 1
            if end == len(lines):
                raise ValueError(f"unclosed ```python block at line {i + 1}")
            indent = len(lines[i]) - len(lines[i].lstrip())   # a block inside a list item
            code = "\n".join(line[indent:] if line[:indent].strip() == "" else line.lstrip()
                             for line in lines[start:end])
            match = NOT_RUN.match(lines[i - 1]) if i > 0 else None
            blocks.append(Block(start + 1, code + "\n",
                                match.group("reason").strip() if match else None))
            i = end
        i += 1
    return blocks


def _doc_id(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def test_parser_finds_blocks_and_not_run_reasons():
    text = ("intro\n```python\na = 1\n```\n<!-- not-run: needs a cluster -->\n"
            "```python\nb = a\n```\n```bash\nls\n```\n- item:\n\n  ```python\n  if a:\n"
            "      c = 2\n\n  ```\n")
    assert python_blocks(text) == [Block(3, "a = 1\n", None),
                                   Block(7, "b = a\n", "needs a cluster"),
                                   Block(15, "if a:\n    c = 2\n\n", None)]


@pytest.mark.parametrize("path", DOC_FILES, ids=_doc_id)
def test_python_blocks_parse(path: Path):
    """Every block, run or not, is valid Python and every not-run says why."""
    for block in python_blocks(path.read_text()):
        try:
            ast.parse(block.code)
        except SyntaxError as err:
            pytest.fail(f"{_doc_id(path)}:{block.line + (err.lineno or 1) - 1}: the python "
                        f"block is not valid Python: {err.msg}")
        if block.not_run is not None:
            assert block.not_run, (f"{_doc_id(path)}:{block.line}: <!-- not-run: --> needs a "
                                   "reason")


@pytest.fixture
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A temporary working directory, one torch thread, and global state put back."""
    import matplotlib.pyplot as plt
    import torch

    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
            yield tmp_path
    finally:
        torch.set_num_threads(threads)
        plt.close("all")


@pytest.mark.slow
@pytest.mark.parametrize("path", DOC_FILES, ids=_doc_id)
def test_python_blocks_run(path: Path, sandbox: Path):
    blocks = [b for b in python_blocks(path.read_text()) if b.not_run is None]
    if not blocks:
        pytest.skip(f"{_doc_id(path)} has no python block to run")
    before = _source_tree_names()
    namespace: dict = {"__name__": "__main__"}
    for block in blocks:
        # Padded so that a traceback names the block's lines in the document.
        code = compile("\n" * (block.line - 1) + block.code, str(path), "exec")
        exec(code, namespace)
    assert _source_tree_names() == before, "a block wrote into the source tree"


def _source_tree_names() -> set[Path]:
    return {p for folder in (ROOT, ROOT / "docs", ROOT / "examples") for p in folder.iterdir()}
