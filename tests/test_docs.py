"""The README stays true to the code: every reason the checker or the report can give is documented."""
from pathlib import Path

from fxq.config import PRESETS
from fxq.placement import SKIP_REASONS
from onnx_post.checker import REASONS

README = (Path(__file__).parent.parent / "README.md").read_text()


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
