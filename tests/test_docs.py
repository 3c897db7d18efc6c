"""Every ```python block of README.md and docs/*.md runs as written.

The blocks of one file run in order in one fresh namespace (later blocks build
on earlier ones), in a subprocess whose working directory is a temporary
folder, so nothing is written into the source tree. A block preceded by the
line ``<!-- not-run: reason -->`` is only checked for syntax; keep those few.

The subprocess runs torch with one thread (as the runner runs every unit):
on a machine shared with other processes, two OpenMP threads per process
made small trainings over ten times slower.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NOT_RUN = re.compile(r"^\s*<!--\s*not-run:(?P<reason>.*?)-->\s*$")
TIMEOUT_S = 300

# Runs in the subprocess: each block compiled under the document's name, with
# its first line at the block's line in the file, so a traceback points there.
_DRIVER = """
import json, sys
import matplotlib
import torch
matplotlib.use("Agg")
torch.set_num_threads(1)
ns = {"__name__": "__main__"}
for block in json.load(open(sys.argv[1])):
    code = "\\n" * (block["line"] - 1) + block["code"]
    exec(compile(code, block["file"], "exec"), ns)
"""


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


@pytest.mark.slow
@pytest.mark.parametrize("path", DOC_FILES, ids=_doc_id)
def test_python_blocks_run(path: Path, tmp_path: Path):
    blocks = [b for b in python_blocks(path.read_text()) if b.not_run is None]
    if not blocks:
        pytest.skip(f"{_doc_id(path)} has no python block to run")
    spec = tmp_path / "blocks.json"
    spec.write_text(json.dumps([{"file": str(path), "line": b.line, "code": b.code}
                                for b in blocks]))
    work = tmp_path / "cwd"
    work.mkdir()
    env = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", _DRIVER, str(spec)], cwd=work, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    assert proc.returncode == 0, (f"a python block of {_doc_id(path)} failed:\n"
                                  f"{proc.stderr[-6000:]}")
