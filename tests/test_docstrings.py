"""The ``>>>`` examples in the package's docstrings run as written and print what they show."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import numpy as np
import pytest
import torch

import quantus_roar

# ``__main__`` runs the command line on import.
_SKIP = {"quantus_roar.__main__"}


def _modules() -> list[str]:
    names = ["quantus_roar"]
    for info in pkgutil.walk_packages(quantus_roar.__path__, prefix="quantus_roar."):
        if info.name not in _SKIP:
            names.append(info.name)
    return sorted(names)


def _tests(name: str) -> list[doctest.DocTest]:
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    globs = {**vars(module), "np": np, "torch": torch, "quantus_roar": quantus_roar}
    return [t for t in finder.find(module, globs=globs) if t.examples]


def test_the_public_core_has_runnable_examples():
    """The core's public entry points each carry at least one example."""
    with_examples = {t.name.split(".")[-1] for name in _modules() for t in _tests(name)}
    for entry in ("removal_counts", "removal_masks", "Removal", "ensure", "derived_seed"):
        assert entry in with_examples, entry


@pytest.mark.parametrize("name", _modules())
def test_docstring_examples_run(name):
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in _tests(name):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed"
