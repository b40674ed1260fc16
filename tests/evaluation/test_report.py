import numpy as np
import torch

from monai_contreg.data.learn2reg import Learn2RegDataset
from monai_contreg.evaluation.report import make_report, pair_figure
from monai_contreg.io.fields import save_field
from tests.learn2reg_helpers import make_tiny_learn2reg


def test_report_writes_pngs_and_index(tmp_path):
    ds = make_tiny_learn2reg(tmp_path / "ds", n_pairs=1)
    pair = Learn2RegDataset(ds).pairs("val")[0]
    ddf = torch.zeros(1, 3, 32, 32, 32)
    ddf[:, 0, :, :, 16:] = -2.0 * torch.arange(32.0).view(32, 1, 1)  # a folded half, outlined in the det panel
    save_field(tmp_path / "fields" / pair.disp_name, ddf)
    index = make_report(ds, tmp_path / "fields", tmp_path / "report")
    text = index.read_text()
    assert index.name == "index.md" and "[png](0001_0001.png)" in text and "TRE before (mm)" in text
    from matplotlib.image import imread

    img = imread(tmp_path / "report" / "0001_0001.png")
    assert img.ndim == 3 and img.shape[0] > 400 and img.shape[1] > 800 and img[..., :3].std() > 0.05


def test_pair_figure_checks_shapes(tmp_path):
    import pytest

    with pytest.raises(ValueError, match="pair_figure: fixed .* must share one grid"):
        pair_figure(tmp_path / "x.png", np.zeros((8, 8, 8)), np.zeros((8, 8, 9)), torch.zeros(1, 3, 8, 8, 8))
