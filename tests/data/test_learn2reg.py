import json
import shutil

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from monai_contreg.data.learn2reg import (
    Learn2RegDataset,
    Learn2RegPair,
    case_id,
    find_dataset_json,
    locate_fields,
)
from monai_contreg.io.fields import save_field
from tests.learn2reg_helpers import make_tiny_learn2reg


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_learn2reg(tmp_path_factory.mktemp("l2r") / "NLST", n_pairs=2, shape=(32, 32, 32), name="NLST")


def test_reads_nlst_style_description(tiny):
    ds = Learn2RegDataset(tiny)
    assert ds.name == "NLST" and ds.json_path.name == "NLST_dataset.json"
    assert ds.expected_shape == (32, 32, 32)
    assert ds.splits == ["training_paired_images", "registration_val", "registration_test"]
    pairs = ds.pairs("val")
    assert [p.key for p in pairs] == ["0001_0001", "0002_0002"]
    p = pairs[0]
    assert p.disp_name == "disp_0001_0001.nii.gz" and p.field_name("npz") == "disp_0001_0001.npz"
    assert p.fixed.name == "NLST_0001_0000.nii.gz" and p.moving.name == "NLST_0001_0001.nii.gz"
    assert p.fixed_mask.parent.name == "masksTr" and p.fixed_mask.name == p.fixed.name
    assert p.moving_keypoints.parent.name == "keypointsTr" and p.moving_keypoints.name == "NLST_0001_0001.csv"
    assert p.fixed_label is None
    assert ds.pairs("registration_val") == pairs and ds.pairs("train") == []
    assert Learn2RegDataset(tiny / "NLST_dataset.json").pairs("val") == pairs


def test_load_pair_monai_transforms(tiny):
    ds = Learn2RegDataset(tiny)
    pair = ds.pairs("val")[1]
    d = ds.load_pair(pair)
    assert set(d) == {"fixed", "moving", "fixed_mask", "moving_mask", "fixed_keypoints", "moving_keypoints"}
    assert isinstance(d["fixed"], MetaTensor) and d["fixed"].shape == (1, 32, 32, 32) and d["fixed"].dtype == torch.float32
    kp = d["fixed_keypoints"]
    assert isinstance(kp, MetaTensor) and kp.shape[1] == 3 and kp.dtype == torch.float64
    assert np.allclose(kp.affine.numpy(), np.diag([2.0, 2.0, 2.0, 1.0]))
    ref = np.loadtxt(pair.fixed_keypoints, delimiter=",")
    assert np.allclose(kp.as_tensor().numpy(), ref)
    # keypoints alone still carry their image's affine (read from the header)
    d2 = ds.load_pair(pair, keys=["moving_keypoints"])
    assert set(d2) == {"moving_keypoints"} and np.allclose(d2["moving_keypoints"].affine.numpy(), np.diag([2.0, 2.0, 2.0, 1.0]))


def test_nlst_synth_pairs_and_initial_tre(nlst_synth):
    ds = Learn2RegDataset(nlst_synth)
    assert ds.name == "NLSTB" and ds.expected_shape == (224, 192, 224)
    pairs = ds.pairs("val")
    assert [p.disp_name for p in pairs] == [f"disp_010{i}_010{i}.nii.gz" for i in range(1, 5)]
    assert all(p.fixed_mask and p.moving_mask and p.fixed_keypoints and p.moving_keypoints for p in pairs)
    d = ds.load_pair(pairs[0], keys=["fixed_keypoints", "moving_keypoints"])
    spacing = np.linalg.norm(d["fixed_keypoints"].affine.numpy()[:3, :3], axis=0)
    assert np.allclose(spacing, 1.5)
    tre0 = np.linalg.norm((d["fixed_keypoints"].numpy() - d["moving_keypoints"].numpy()) * spacing, axis=1).mean()
    assert tre0 == pytest.approx(9.79, abs=0.01)  # the dataset README's initial distance for 0101


def test_case_ids_and_long_names():
    assert case_id("./imagesTr/NLST_0101_0001.nii.gz") == ("0101", "0001")
    assert case_id("AbdomenMRCT_0011_0002.nii.gz") == ("0011", "0002")
    with pytest.raises(ValueError, match=r"case_id: image name 'scan\.nii\.gz' must follow"):
        case_id("scan.nii.gz")
    p = Learn2RegPair(fixed=None, moving=None, fixed_case="0011", moving_case="0011", fixed_modality="0000", moving_modality="0002")
    assert p.disp_name == "disp_0011_0000_0011_0002.nii.gz"
    with pytest.raises(ValueError, match="field_name: fmt must be"):
        p.field_name(".mha")


def test_clear_errors(tiny, tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset path .* does not exist"):
        Learn2RegDataset(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=r"no Learn2Reg description \(\*_dataset.json"):
        Learn2RegDataset(tmp_path)
    ds = Learn2RegDataset(tiny)
    with pytest.raises(ValueError, match=r"unknown split 'vall'.*Did you mean 'val'\?"):
        ds.pairs("vall")
    with pytest.raises(ValueError, match=r"Did you mean 'registration_test'\?"):
        ds.pairs("registration_tset")
    # a missing image is named with the split and entry
    broken = tmp_path / "broken"
    shutil.copytree(tiny, broken)
    (broken / "imagesTr" / "NLST_0002_0001.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"moving image .*NLST_0002_0001.nii.gz' of 'registration_val' entry 1"):
        Learn2RegDataset(broken).pairs("val")
    (broken / "Other_dataset.json").write_text("{}")
    with pytest.raises(ValueError, match="several descriptions"):
        find_dataset_json(broken)
    (broken / "Other_dataset.json").unlink()
    desc = json.loads((broken / "NLST_dataset.json").read_text())
    del desc["registration_test"]
    desc["registration_val"].append({"fixed": "./imagesTr/x.nii.gz"})
    (broken / "NLST_dataset.json").write_text(json.dumps(desc))
    with pytest.raises(ValueError, match=r"split 'test' \(registration_test\) is not in NLST_dataset.json"):
        Learn2RegDataset(broken).pairs("test")
    with pytest.raises(ValueError, match="entry 2 of 'registration_val' .* must have 'fixed' and 'moving'"):
        Learn2RegDataset(broken).pairs("val", check_files=False)
    (broken / "NLST_dataset.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot read dataset description"):
        Learn2RegDataset(broken)
    with pytest.raises(ValueError, match=r"load_pair: unknown keys \['fixed_keypoint'\].*Did you mean 'fixed_keypoints'"):
        ds.load_pair(ds.pairs("val")[0], keys=["fixed_keypoint"])


def test_locate_fields_checks_presence_and_shape(tiny, tmp_path):
    ds = Learn2RegDataset(tiny)
    pairs = ds.pairs("val")
    save_field(tmp_path / "disp_0001_0001.nii.gz", torch.zeros(1, 3, 32, 32, 32))
    with pytest.raises(FileNotFoundError, match=r"1 of 2 field\(s\) missing .*\['disp_0002_0002.nii.gz'\]"):
        locate_fields(pairs, tmp_path, ds.expected_shape)
    save_field(tmp_path / "disp_0002_0002.npz", torch.zeros(1, 3, 32, 32, 20))
    with pytest.raises(ValueError, match=r"must be \(32, 32, 32, 3\).*'disp_0002_0002.npz': \(32, 32, 20, 3\)"):
        locate_fields(pairs, tmp_path, ds.expected_shape)
    found = locate_fields(pairs, tmp_path, None)
    assert found["0002_0002"].name == "disp_0002_0002.npz"


def test_explicit_per_image_entries_win(tiny, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(tiny, root)
    (root / "kp").mkdir()
    shutil.move(root / "keypointsTr" / "NLST_0001_0000.csv", root / "kp" / "fixed1.csv")
    desc = json.loads((root / "NLST_dataset.json").read_text())
    desc["training"] = [{"image": "./imagesTr/NLST_0001_0000.nii.gz", "keypoints": "./kp/fixed1.csv",
                         "mask": "./masksTr/NLST_0001_0000.nii.gz"}]
    (root / "NLST_dataset.json").write_text(json.dumps(desc))
    p = Learn2RegDataset(root).pairs("val")[0]
    assert p.fixed_keypoints == (root / "kp" / "fixed1.csv").resolve()
    assert p.fixed_mask.name == "NLST_0001_0000.nii.gz" and p.moving_keypoints.name == "NLST_0001_0001.csv"
