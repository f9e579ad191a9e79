"""The runnable examples in the docstrings of the modules this test names run as written (doctest)."""

import doctest
import importlib

import pytest

MODULES = [
    "fusion.results",
    "fusion.user_files",
    "fusion.command_lines",
    "fusion.names",
    "analysis.grid",
    "analysis.rows",
]


@pytest.mark.parametrize("name", MODULES)
def test_the_docstring_examples_run(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0, result
