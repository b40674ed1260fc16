"""The command line answers ``--help`` and argument errors before importing anything heavy.

Deterministic: each case runs the CLI in a fresh interpreter and lists the heavy packages in ``sys.modules``
afterwards (no wall-clock assertion; the timing is ``benchmarks/startup.py``).
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "monai", "itk", "ignite", "scipy", "matplotlib", "numpy", "nibabel", "optuna")

_PROBE = f"""
import json, sys
from monai_contreg.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
heavy = sorted(m for m in sys.modules if m.split('.')[0] in {set(HEAVY)!r})
print(json.dumps({{"code": code, "heavy": heavy}}))
"""


def _probe(*argv: str) -> tuple[dict, str]:
    proc = subprocess.run([sys.executable, "-c", _PROBE, *argv], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


COMMANDS = ["register", "register-native", "run", "submit", "evaluate", "download", "demo", "mask", "warp", "tune"]


@pytest.mark.parametrize("argv", [["--help"], *([c, "--help"] for c in COMMANDS)], ids=lambda a: " ".join(a))
def test_help_imports_nothing_heavy(argv):
    res, _ = _probe(*argv)
    assert res == {"code": 0, "heavy": []}


ERRORS = {
    "bad --max-memory": (["register", "f.nii.gz", "m.nii.gz", "-o", "d.nii.gz", "--max-memory", "abc"],
                         "argument --max-memory: expected a memory size such as 8G"),
    "misplaced -v": (["register", "f.nii.gz", "m.nii.gz", "-o", "d.nii.gz", "-v"],
                     "unrecognized arguments: -v (-v/--verbose goes before the command"),
    "unknown option": (["run", "ds", "-o", "out", "--no-such-option"], "unrecognized arguments: --no-such-option"),
    "bad preset": (["register", "f.nii.gz", "m.nii.gz", "-o", "d.nii.gz", "--preset", "i0"],
                   "contreg register: error: --preset: unknown preset 'i0'; expected one of"),
    "bad backend": (["run", "ds", "-o", "out", "--backend", "mpi"],
                    "contreg run: error: --backend: unknown backend 'mpi'; expected one of ['gloo', 'nccl']"),
    "bad format": (["run", "ds", "-o", "out", "--format", "mha"], "contreg run: error: --format: unknown field format 'mha'"),
    "bad objective": (["tune", "ds", "-o", "b.yaml", "--objective", "ssd"],
                      "contreg tune: error: --objective: unknown objective 'ssd'"),
    "non-number --threads": (["demo", "--threads", "two"], "argument --threads: expected a whole number >= 1, got 'two'"),
    "zero --threads": (["register-native", "f", "m", "-o", "d.nii.gz", "--threads", "0"],
                       "argument --threads: expected a whole number >= 1, got '0'"),
    "bad --device": (["demo", "--device", "gpu"], "argument --device: expected a device such as cpu, cuda or cuda:1"),
    "bad --working-spacing": (["register-native", "f", "m", "-o", "d.nii.gz", "--working-spacing", "1,2"],
                              "argument --working-spacing: expected one spacing in mm or three"),
    "bad --points-space": (["warp", "--field", "d.nii.gz", "--points-space", "wrld"], "Did you mean 'world'?"),
    "--eval-json alone": (["run", "ds", "-o", "out", "--eval-json", "e.json"], "--eval-json: give --evaluate too"),
    "bad --sha256": (["download", "nlst", "dest", "--sha256", "zz"], "--sha256: expected a SHA-256 digest"),
    "missing argument": (["register", "f.nii.gz"], "the following arguments are required: moving, -o/--output"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_argument_errors_import_nothing_heavy(case):
    argv, message = ERRORS[case]
    res, err = _probe(*argv)
    assert res == {"code": 2, "heavy": []}, err
    assert message in err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith(("usage:", " "))]
    assert len(lines) == 1 and "Traceback" not in err, err


def test_package_import_is_light_and_exports_lazily():
    code = ("import sys, monai_contreg as m\n"
            f"heavy = sorted(x for x in sys.modules if x.split('.')[0] in {set(HEAVY)!r})\n"
            "names = dir(m)\n"
            "print(heavy, all(n in names for n in m.__all__))\n"
            "print(m.register.__module__, m.RegistrationConfig.__name__, m.get_preset('io').method)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    first, second = proc.stdout.strip().splitlines()[-2:]
    assert first == "[] True"
    assert second.split()[:2] == ["monai_contreg.api", "RegistrationConfig"]


def test_lazy_exports_match_their_modules():
    import monai_contreg
    from monai_contreg import api
    from monai_contreg.methods import presets
    from monai_contreg.optim import handlers

    assert monai_contreg.register is api.register and monai_contreg.PRESETS is presets.PRESETS
    assert monai_contreg.RegistrationDivergedError is handlers.RegistrationDivergedError
    assert sorted(monai_contreg.__all__) == monai_contreg.__all__ and "__version__" in monai_contreg.__all__
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        monai_contreg.no_such_name  # noqa: B018


def test_light_constants_match_the_heavy_modules():
    from monai_contreg import cli, distributed, tuning, workflow
    from monai_contreg.methods.presets import preset_names

    assert list(cli.PRESET_NAMES) == preset_names()
    assert cli.FIELD_FORMATS == workflow.FIELD_FORMATS
    assert cli.BACKENDS == distributed.BACKENDS
    assert cli.OBJECTIVES == tuning.OBJECTIVES
