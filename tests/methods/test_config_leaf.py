"""methods/config.py is a leaf: it imports only leaf modules of the package, and the packages it sits in load
their submodules lazily, so a lower layer (losses, optim, spatial) may import it without reaching up."""

import ast
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "monai_contreg"
LEAVES = {"_validation", "modes", "errors", "optim.schedule"}


def _package_imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = ".".join(path.relative_to(PKG).parent.parts[: len(path.relative_to(PKG).parent.parts) - node.level + 1])
            out.add(".".join(p for p in (base, node.module or "") if p))
    return out


def test_config_imports_only_leaves():
    # config.py, and the two modules it is split into (stage kinds; dotted keys), import only leaves and each other
    assert _package_imports(PKG / "methods" / "stages.py") <= LEAVES
    assert _package_imports(PKG / "methods" / "keys.py") <= LEAVES | {"methods.stages"}
    assert _package_imports(PKG / "methods" / "config.py") <= LEAVES | {"methods.stages", "methods.keys"}
    assert _package_imports(PKG / "optim" / "schedule.py") <= {"_validation", "modes", "errors"}
    assert _package_imports(PKG / "modes.py") == set()


def test_importing_config_loads_nothing_above_it():
    code = (
        "import sys, types, importlib.util as u\n"
        f"pkg = types.ModuleType('monai_contreg'); pkg.__path__ = [{str(PKG)!r}]; sys.modules['monai_contreg'] = pkg\n"
        "import monai_contreg.methods.config\n"
        "print(sorted(m for m in sys.modules if m.startswith('monai_contreg')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = set(eval(out))  # noqa: S307 - our own printed list
    assert loaded <= {"monai_contreg", "monai_contreg.methods", "monai_contreg.methods.config", "monai_contreg._validation",
                      "monai_contreg.methods.stages", "monai_contreg.methods.keys",
                      "monai_contreg.modes", "monai_contreg.errors", "monai_contreg.options", "monai_contreg.optim", "monai_contreg.optim.schedule"}
