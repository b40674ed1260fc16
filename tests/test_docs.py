"""The documentation (mkdocs.yml, docs/): the README is a landing page, every public module has its API reference
page, every guide is in the nav, and the README's short example runs as written (on the demo pair).

`mkdocs build --strict` itself (warnings as errors) runs in .ci/run, with the docs extra installed.
"""

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"


def _public_modules() -> list[str]:
    out = []
    for p in sorted((REPO / "monai_contreg").rglob("*.py")):
        parts = list(p.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if not any(x.startswith("_") for x in parts):
            out.append(".".join(parts))
    return out


def test_readme_is_a_landing_page_with_the_two_commands_first():
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    first = text.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line for line in first.splitlines() if line and not line.startswith("#")]
    assert commands == [
        'python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && pip install -e ".[test]" && contreg demo',
        "python -m pytest -q tests",
    ]
    for target in re.findall(r"\]\((docs/[^)#]+)", text):  # every link into the docs names a page that exists
        assert (REPO / target).is_file(), target


def test_every_public_module_has_an_api_reference_page():
    rendered = set()
    for page in (REPO / "docs" / "reference").glob("*.md"):
        rendered |= set(re.findall(r"^::: ([\w.]+)", page.read_text(), flags=re.M))
    missing = [m for m in _public_modules() if m not in rendered]
    assert not missing, (f"modules without an API reference page: {missing}; add '::: NAME' to the page of its "
                         "package in docs/reference/ (a new top-level module: a new page, listed in mkdocs.yml)")


def test_every_page_is_in_the_nav():
    nav = (REPO / "mkdocs.yml").read_text().split("\nnav:", 1)[1]
    listed = set(re.findall(r"([\w/.-]+\.md)\s*$", nav, flags=re.M))
    pages = {p.relative_to(REPO / "docs").as_posix() for p in (REPO / "docs").rglob("*.md")}
    assert pages - listed == set(), "pages missing from the nav of mkdocs.yml"
    assert listed - pages == set(), "nav entries without a page"


@pytest.mark.slow
def test_readme_short_example_runs(tmp_path, monkeypatch):
    """The README's Python example, as written, on the demo pair saved as the files it names (fixed_kp and
    moving_kp: the pair's voxel keypoints); the io preset's full run on a 32^3 pair."""
    from monai_contreg.data.demo import make_demo_pair
    from monai_contreg.io.fields import load_field

    block = README.read_text().split("```python\n", 1)[1].split("```", 1)[0]
    pair = make_demo_pair(shape=(32, 32, 32), n_keypoints=20, seed=0, max_motion=2.0)
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    for name, arr in (("fixed", pair.fixed), ("moving", pair.moving)):
        nib.save(nib.Nifti1Image(arr.astype(np.float32), aff), str(tmp_path / f"{name}.nii.gz"))
    for name, arr in (("fixed_mask", pair.fixed_mask), ("moving_mask", pair.moving_mask)):
        nib.save(nib.Nifti1Image(arr.astype(np.uint8), aff), str(tmp_path / f"{name}.nii.gz"))
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(1)
    kp = {"fixed_kp": torch.as_tensor(pair.fixed_keypoints).double(), "moving_kp": torch.as_tensor(pair.moving_keypoints).double()}
    scope: dict = dict(kp)
    exec(compile(block, "README.md", "exec"), scope)  # noqa: S102 - the documented example itself
    result, cfg = scope["result"], scope["cfg"]
    assert tuple(result.ddf.shape) == (1, 3, 32, 32, 32)
    field, _ = load_field(tmp_path / "disp_0001_0001.nii.gz")
    assert torch.allclose(field.float(), result.ddf.as_tensor().float(), atol=1e-4)
    initial = (kp["fixed_kp"] - kp["moving_kp"]).mul(2.0).norm(dim=1).mean()
    assert float(result.tre(kp["fixed_kp"], kp["moving_kp"]).mean()) < float(initial)
    assert cfg.multilevel.levels[1].reg_weight == 2.5
