"""The package's layers are a checked contract: `lint-imports` (import-linter, [tool.importlinter] in pyproject.toml)
passes on this tree, so no module imports one above it and there is no import cycle between layers."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _lint(cwd: Path, package_root: Path) -> subprocess.CompletedProcess:
    # analyse this tree, not an installed copy; import-linter prints box-drawing characters: UTF-8 whatever the locale
    env = dict(os.environ, PYTHONPATH=str(package_root), PYTHONIOENCODING="utf-8")
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                          encoding="utf-8", errors="replace", timeout=None)


def test_lint_imports_keeps_the_layers_contract():
    pytest.importorskip("importlinter")
    out = _lint(REPO, REPO)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "monai_contreg layers KEPT" in out.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    """The contract can fail: a copy of the package whose spatial layer imports the api layer is refused."""
    pytest.importorskip("importlinter")
    import shutil

    shutil.copytree(REPO / "monai_contreg", tmp_path / "monai_contreg", ignore=shutil.ignore_patterns("__pycache__", "csrc"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    with open(tmp_path / "monai_contreg" / "spatial" / "grid.py", "a") as fh:
        fh.write("\n\ndef _upward():\n    from ..api import register  # noqa: F401\n")
    out = _lint(tmp_path, tmp_path)
    assert out.returncode != 0 and "monai_contreg.spatial.grid -> monai_contreg.api" in out.stdout


def test_no_module_of_the_tuning_package_is_over_800_lines():
    """Issue 18: tuning.py was 1,702 lines holding eight concerns; the package keeps every module under 800."""
    modules = sorted((REPO / "monai_contreg" / "tuning").glob("*.py"))
    assert len(modules) >= 5
    lengths = {p.name: len(p.read_text().splitlines()) for p in modules}
    assert max(lengths.values()) <= 800, lengths
