"""The README stays true to the code: every reason the checker or the report can give is documented, and
every test its bad-input table names exists."""
import ast
import re
from pathlib import Path

from fxq.config import PRESETS
from fxq.placement.place import SKIP_REASONS
from onnx_post.checker import REASONS

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()


def test_every_reason_is_explained_in_the_readme():
    missing = [r for r in list(REASONS) + list(SKIP_REASONS) if f"`{r}`" not in README]
    assert not missing


def test_readme_commands_exist():
    makefile = (Path(__file__).parent.parent / "Makefile").read_text()
    assert "make demo" in README and "make test" in README
    assert "\ndemo:" in makefile and "\ntest:" in makefile
    ci = (Path(__file__).parent.parent / ".ci" / "run").read_text()
    assert "make test" in ci
    for preset in PRESETS:
        assert preset in README


def test_doc_table_names_real_tests():
    doc = (ROOT / "README.md").read_text()
    named = re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", doc)
    assert len(named) >= 30
    defined = {}
    for file in {f for f, _ in named}:
        tree = ast.parse((ROOT / file).read_text())
        defined[file] = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    missing = [f"{f}::{t}" for f, t in named if t not in defined[f]]
    assert not missing
