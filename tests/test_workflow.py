import json
import re
import shutil
import zipfile

import numpy as np
import pytest

from monai_contreg.api import register
from monai_contreg.cli import main
from monai_contreg.evaluation.learn2reg import evaluate_learn2reg
from monai_contreg.methods.presets import get_preset
from monai_contreg.workflow import make_submission, run_split
from tests.learn2reg_helpers import FAST, make_tiny_learn2reg

CFG = get_preset("io").with_overrides([*FAST[:3], "optim.schedule.peak_lr=0.2"])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_tiny_learn2reg(tmp_path_factory.mktemp("wf") / "ds", n_pairs=2)


@pytest.fixture(scope="module")
def run_out(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("wf_out") / "out"
    summary = run_split(dataset, "val", out, CFG)
    assert summary.done == ["0001_0001", "0002_0002"] and not summary.failed
    return out


def _calls():
    calls = []

    def spy(*args, **kwargs):
        calls.append(kwargs["name"])
        return register(*args, **kwargs)

    return calls, spy


def test_run_writes_fields_and_runtime_log(run_out):
    # besides the fields and the log only the log's lock file (hidden; see workflow.locked_log)
    assert sorted(p.name for p in run_out.iterdir()) == [".runtimes.json.lock", "disp_0001_0001.nii.gz", "disp_0002_0002.nii.gz", "runtimes.json"]
    log = json.loads((run_out / "runtimes.json").read_text())
    assert log["name"] == "TINY" and log["split"] == "registration_val" and log["failures"] == {}
    case = log["cases"]["0001_0001"]
    assert case["steps"] == 3 and 0 < case["seconds"] <= case["wall_seconds"] and np.isfinite(case["final_loss"])
    assert log["config"]["stages"][0]["schedule"]["total_steps"] == 3  # the config as a list of stages
    from monai_contreg.kernels import extension_status

    # which implementation ran is recorded per pair
    assert case["kernels"] == ("compiled" if extension_status().startswith("compiled") else "pytorch")
    # and what masked it (the dataset's masks here; automatic masks add their volumes and checks)
    assert case["mask"] == {"masked": True, "fixed": {"source": "given"}, "moving": {"source": "given"},
                            "modality": {"fixed": "ct", "moving": "ct"}}


def test_resume_after_kill_redoes_only_the_missing_pair(dataset, run_out, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(run_out, out)
    (out / "disp_0002_0002.nii.gz").unlink()  # killed before pair 2's field was renamed into place
    (out / ".disp_0002_0002.nii.gz.abc.tmp.nii.gz").write_bytes(b"partial")  # its temporary
    kept = (out / "disp_0001_0001.nii.gz").stat().st_mtime_ns
    calls, spy = _calls()
    lines = []
    summary = run_split(dataset, "val", out, CFG, register_fn=spy, on_pair=lambda o, i, n: lines.append((o.key, o.status, i, n)))
    assert calls == ["0002_0002"] and summary.skipped == ["0001_0001"] and summary.done == ["0002_0002"]
    assert lines == [("0001_0001", "skipped", 0, 2), ("0002_0002", "done", 1, 2)]
    assert (out / "disp_0001_0001.nii.gz").stat().st_mtime_ns == kept
    assert not list(out.glob(".disp_*"))
    log = json.loads((out / "runtimes.json").read_text())
    assert set(log["cases"]) == {"0001_0001", "0002_0002"}
    calls, spy = _calls()
    assert run_split(dataset, "val", out, CFG, register_fn=spy).skipped == ["0001_0001", "0002_0002"] and calls == []


def test_a_failing_pair_does_not_stop_the_others(dataset, tmp_path):
    def flaky(*args, **kwargs):
        if kwargs["name"] == "0001_0001":
            raise RuntimeError("boom")
        return register(*args, **kwargs)

    summary = run_split(dataset, "val", tmp_path / "out", CFG, register_fn=flaky)
    assert summary.failed == ["0001_0001"] and summary.done == ["0002_0002"]
    log = json.loads((tmp_path / "out" / "runtimes.json").read_text())
    assert log["failures"] == {"0001_0001": "RuntimeError: boom"} and list(log["cases"]) == ["0002_0002"]
    assert not (tmp_path / "out" / "disp_0001_0001.nii.gz").exists()


def test_overwrite_of_a_pair_that_now_fails_removes_its_earlier_field(dataset, run_out, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(run_out, out)

    def diverges(*args, **kwargs):
        if kwargs["name"] == "0001_0001":
            raise RuntimeError("boom")
        return register(*args, **kwargs)

    summary = run_split(dataset, "val", out, CFG, register_fn=diverges, overwrite=True)
    assert summary.failed == ["0001_0001"] and summary.done == ["0002_0002"]
    # the earlier run's field of the failed pair is not left to be evaluated as this run's
    assert not (out / "disp_0001_0001.nii.gz").exists() and (out / "disp_0002_0002.nii.gz").exists()
    log = json.loads((out / "runtimes.json").read_text())
    assert list(log["cases"]) == ["0002_0002"]
    assert log["failures"] == {"0001_0001": "RuntimeError: boom (the earlier field disp_0001_0001.nii.gz was removed: --overwrite)"}


def test_cli_run_reports_failures_with_nonzero_exit(dataset, tmp_path, capsys):
    broken = tmp_path / "ds"
    shutil.copytree(dataset, broken)
    moving = broken / "imagesTr" / "TINY_0001_0001.nii.gz"
    data = moving.read_bytes()
    moving.write_bytes(b"not a nifti")  # unreadable header: refused by the pre-flight, before any pair runs
    sets = [a for s in FAST for a in ("--set", s)]
    rc = main(["run", str(broken), "--split", "val", "-o", str(tmp_path / "out"), "--no-bar", *sets])
    cap = capsys.readouterr()
    assert rc == 2 and not (tmp_path / "out").exists() and len(cap.err.strip().splitlines()) == 1
    assert re.search(r"contreg run: error: run: 1 of 2 pairs have unusable inputs: pair 0001_0001: cannot read moving "
                     r"file '.*TINY_0001_0001.nii.gz': the name ends in .gz but the file is not gzip-compressed", cap.err)
    moving.write_bytes(data[: len(data) // 2])  # header fine, voxels truncated: this pair fails, the other runs
    rc = main(["run", str(broken), "--split", "val", "-o", str(tmp_path / "out"), "--no-bar", *sets])
    cap = capsys.readouterr()
    assert rc == 1 and "Traceback" not in cap.err
    assert re.search(r"\[1/2\] 0001_0001 FAILED after [0-9.]+s: UserInputError: register: cannot read moving file "
                     r"'.*TINY_0001_0001.nii.gz': truncated gzip data", cap.err)
    log = json.loads((tmp_path / "out" / "runtimes.json").read_text())
    assert "truncated gzip data" in log["failures"]["0001_0001"] and list(log["cases"]) == ["0002_0002"]
    assert "[2/2] 0002_0002 done in" in cap.out and "final loss" in cap.out
    assert "registered 1, skipped 0, failed 1 of 2 pairs" in cap.out
    rc = main(["run", str(broken), "--split", "vall", "-o", str(tmp_path / "out")])
    assert rc == 2 and "Did you mean 'val'" in capsys.readouterr().err
    rc = main(["run", str(broken), "--split", "test", "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and "split 'registration_test' of TINY_dataset.json lists no pairs" in err and "registration_val" in err


def test_submit_unzip_evaluate_equals_folder(dataset, run_out, tmp_path):
    sub = make_submission(run_out, dataset, tmp_path / "submission.zip", split="val")
    with zipfile.ZipFile(sub) as zf:
        assert sorted(zf.namelist()) == ["disp_0001_0001.nii.gz", "disp_0002_0002.nii.gz"]
        assert all((i.external_attr >> 16) & 0o644 == 0o644 for i in zf.infolist())
        zf.extractall(tmp_path / "unzipped")
    folder = evaluate_learn2reg(dataset, run_out, "val", runtimes=None)
    assert evaluate_learn2reg(dataset, sub, "val", runtimes=None) == folder
    assert evaluate_learn2reg(dataset, tmp_path / "unzipped", "val", runtimes=None) == folder
    assert folder["cases"]["0001_0001"]["TRE_kp"]["mean"] > 0


def test_submit_npz_and_checks(dataset, run_out, tmp_path, capsys):
    rc = main(["submit", str(run_out), "-o", str(tmp_path / "s.zip"), "--dataset", str(dataset), "--format", "npz"])
    assert rc == 0 and "2 fields" in capsys.readouterr().out
    with zipfile.ZipFile(tmp_path / "s.zip") as zf:
        assert sorted(zf.namelist()) == ["disp_0001_0001.npz", "disp_0002_0002.npz"]
        zf.extractall(tmp_path / "npz")
    with np.load(tmp_path / "npz" / "disp_0001_0001.npz") as z:
        arr = z[z.files[0]]
    assert arr.dtype == np.float16 and arr.shape == (32, 32, 32, 3)
    a = evaluate_learn2reg(dataset, tmp_path / "s.zip", "val", runtimes=None)["aggregates"]["TRE_kp"]["mean"]
    b = evaluate_learn2reg(dataset, run_out, "val", runtimes=None)["aggregates"]["TRE_kp"]["mean"]
    assert a == pytest.approx(b, abs=1e-2)
    # a wrong-shaped field stops the submission before anything is zipped
    bad = tmp_path / "bad"
    shutil.copytree(run_out, bad)
    from monai_contreg.io.fields import save_field
    import torch

    save_field(bad / "disp_0002_0002.nii.gz", torch.zeros(1, 3, 32, 32, 30))
    rc = main(["submit", str(bad), "-o", str(tmp_path / "bad.zip"), "--dataset", str(dataset)])
    assert rc == 2 and "must be (32, 32, 32, 3)" in capsys.readouterr().err and not (tmp_path / "bad.zip").exists()
    (bad / "disp_0002_0002.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing .*disp_0002_0002.nii.gz"):
        make_submission(bad, dataset, tmp_path / "bad.zip")
    assert not (tmp_path / "bad.zip").exists() and not list(tmp_path.glob(".bad.zip*"))
    with pytest.raises(ValueError, match="make_submission: unknown fmt '.mha'"):
        make_submission(run_out, dataset, tmp_path / "x.zip", fmt="mha")


def test_cli_end_to_end(dataset, tmp_path, capsys):
    sets = [a for s in FAST for a in ("--set", s)]
    out = tmp_path / "out"
    assert main(["run", str(dataset), "-o", str(out), "--no-bar", *sets]) == 0
    assert main(["submit", str(out), "-o", str(tmp_path / "sub.zip"), "--dataset", str(dataset)]) == 0
    assert main(["evaluate", str(dataset), str(out), "--json", str(tmp_path / "e.json")]) == 0
    res = json.loads((tmp_path / "e.json").read_text())
    assert res["aggregates"]["runtime"]["n"] == 2 and set(res["cases"]) == {"0001_0001", "0002_0002"}
    capsys.readouterr()
    assert main(["run", str(dataset), "-o", str(out), "--no-bar", *sets]) == 0
    assert "skipped 2" in capsys.readouterr().out
