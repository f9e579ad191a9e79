"""The pages' sources: Streamlit's magic writes every bare expression of a page's body to the page, so a string meant
as documentation below the module docstring would show up as text."""

import ast
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PAGES = [REPO_ROOT / "app.py", *sorted((REPO_ROOT / "pages").glob("*.py"))]


@pytest.mark.parametrize("path", PAGES, ids=lambda p: p.name)
def test_no_page_writes_a_stray_string_through_magic(path: Path) -> None:
    body = ast.parse(path.read_text()).body
    stray = [
        node.lineno
        for node in body[1:]
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
    ]
    assert not stray, f"{path.name}: bare strings at lines {stray} would be written to the page"
