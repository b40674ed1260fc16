"""Do exported ITK transforms mean in ITK (and ANTs) what they mean in `contreg warp`, for every header kind?

    python benchmarks/export_parity.py [--kinds all] [--ants /work/antsvenv/bin/python] [--json out.json]
    python benchmarks/export_parity.py --issue-pair WORKDIR [--ants PY]   # issue 23's 40x40x32 pair, via the CLI

Header kinds (:data:`KINDS`): NIfTI files whose readers disagree (sform/qform, no codes, sheared sform with a
qform, ...), ones they agree on (qform only with qfac -1, sform with a scanner code), a NRRD with non-orthogonal
directions, and one ITK cannot read at all (a sheared sform without a qform: the export must be refused). For each
kind a fixed and a moving image get that header (the moving one offset differently, so that a correction applied
to the wrong image shows), a smooth known field (voxels of the fixed grid, fixed -> moving) is exported
through :func:`monai_contreg.io.itk_transforms.save_itk_transform` with both files' ITK readings, and:

* ``contreg warp`` (:func:`monai_contreg.apply.apply_to_files` with the Learn2Reg field) warps the moving image
  and maps the fixed voxel centres to moving voxels;
* ITK (``itk.imread`` of the same files, ``itk.transformread`` of the ``.h5``, ``itk.resample_image_filter``
  with the fixed image as reference; ``TransformPoint``) does the same with the export;
* with ``--ants PY`` (a Python with ``antspyx``; it need not have monai_contreg) ANTs does it too
  (``ants.image_read``, ``ants.apply_transforms``, ``ants.apply_transforms_to_points``) with the ``.nii.gz``
  displacement image and the ``.h5``.

Point error: ``|B_m (v_tool - v_contreg)|`` mm, ``v`` the moving voxel a fixed voxel centre maps to and ``B_m``
the tool's reading of the moving image (mm in the tool's moving frame). Image error: mean and max
``|warped_tool - warped_contreg|`` over the fixed voxels whose mapped point lies at least one voxel inside the
moving image (intensities about 100 per standard deviation).

``--issue-pair`` rebuilds the issue's pair (40x40x32 at 1.5 mm; the fixed file's sform (code 2) and qform
(code 1) 6 mm apart; the moving image the fixed content shifted by a known (2.4, -1.6, 1.2) voxels), runs
``contreg register-native F M -o disp.nii.gz --itk tx.h5 --preset io-lr1`` and ``contreg warp --field``, applies
tx.h5 with ITK (the README recipe: reference image = fixed.nii.gz) and prints mean |warped - fixed| HU inside
the image (a 4-voxel margin) for: before registration, contreg warp, ITK; and the point error (mm) of ITK
against contreg warp. It uses only the CLI, nibabel and itk, so it runs on any version of the package.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()


# ----------------------------------------------------------------------------------------------------------------
# helpers that need only numpy, nibabel and itk (the ANTs worker imports this file too)

def itk_affine(img) -> np.ndarray:
    """An ITK image's geometry as a 4x4 RAS voxel-to-world matrix."""
    import itk

    d = np.asarray(itk.array_from_matrix(img.GetDirection()), dtype=np.float64)
    out = np.eye(4)
    flip = np.diag([-1.0, -1.0, 1.0])
    out[:3, :3] = flip @ d @ np.diag(np.asarray(img.GetSpacing(), dtype=np.float64))
    out[:3, 3] = flip @ np.asarray(img.GetOrigin(), dtype=np.float64)
    return out


def to_world(aff: np.ndarray, vox: np.ndarray) -> np.ndarray:
    return vox @ aff[:3, :3].T + aff[:3, 3]


def to_voxel(aff: np.ndarray, pts: np.ndarray) -> np.ndarray:
    inv = np.linalg.inv(aff)
    return pts @ inv[:3, :3].T + inv[:3, 3]


LPS = np.array([-1.0, -1.0, 1.0])


def itk_map_voxels(tx, fixed_aff_itk: np.ndarray, moving_aff_itk: np.ndarray, vox: np.ndarray) -> np.ndarray:
    """Fixed voxel centres ``(N, 3)`` -> moving voxels through an ITK transform, both images as ITK reads them."""
    pts = to_world(fixed_aff_itk, vox) * LPS
    out = np.array([list(tx.TransformPoint([float(v) for v in p])) for p in pts]) * LPS
    return to_voxel(moving_aff_itk, out)


def itk_warp(fixed_path: str, moving_path: str, tx) -> np.ndarray:
    """The moving image resampled by ITK onto the fixed image's grid, as ``[x, y, z]`` numpy (NaN outside)."""
    import itk

    fixed = itk.imread(fixed_path, itk.F)
    moving = itk.imread(moving_path, itk.F)
    out = itk.resample_image_filter(moving, transform=tx, use_reference_image=True, reference_image=fixed,
                                    default_pixel_value=float("nan"))
    return itk.array_from_image(out).transpose(2, 1, 0).astype(np.float64)


def read_h5(path: str):
    import itk

    (tx,) = itk.transformread(path)
    return tx


# ----------------------------------------------------------------------------------------------------------------
# header kinds

F_SHAPE, M_SHAPE = (10, 9, 8), (12, 11, 10)

#: kind -> what the two readers do with it (itk 5.4.7, nibabel 5.4.2 / MONAI 1.6; ANTsPy 0.6.3 as ITK).
KINDS = {
    "consistent": "sform = qform (code 1): both read it",
    "sform_qform": "sform (code 2) and qform (code 1) differ by 6 mm and 3 degrees: the package reads the sform, ITK the qform",
    "sform_scanner": "sform (code 1, scanner) and qform (code 1) differ: both read the sform",
    "qform_only_qfac": "qform only (sform code 0), qfac -1 (left-handed): both read the qform",
    "no_codes": "neither coded: the package centres the grid (nibabel's base affine), ITK starts it at the origin",
    "sheared_sform_qform": "sheared sform (code 2, columns as long as pixdim) and a qform (code 1): the package reads "
                           "the sheared sform, ITK the qform",
    "sheared_sform_only": "sheared sform (code 2), no qform: ITK cannot read the file (export refused)",
    "tiny_shear_sform": "sform only (code 2) with a shear of |cos| 7e-5, which ITK accepts and keeps as a "
                        "non-orthonormal direction matrix: both read it",
    "nonorthogonal_nrrd": "NRRD with non-orthogonal space directions: both read them (ITK keeps them)",
}


def _rot(axis: int, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    i, j = [k for k in range(3) if k != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def base_affines() -> tuple[np.ndarray, np.ndarray]:
    """The package's readings of the fixed and moving images when the header is consistent (oblique, anisotropic)."""
    f = np.eye(4)
    f[:3, :3] = _rot(2, 0.2) @ np.diag([1.5, 1.2, 2.0])
    f[:3, 3] = [10.0, -20.0, 5.0]
    m = np.eye(4)
    m[:3, :3] = _rot(0, -0.15) @ np.diag([1.3, 1.4, 1.8])
    m[:3, 3] = [4.0, -26.0, -1.0]
    return f, m


def _other(a: np.ndarray, shift, angle: float) -> np.ndarray:
    """``a`` moved by ``shift`` mm and turned by ``angle`` about z: the second matrix of a header."""
    o = a.copy()
    o[:3, :3] = _rot(2, angle) @ a[:3, :3]
    o[:3, 3] = a[:3, 3] + np.asarray(shift, dtype=np.float64)
    return o


def _sheared(a: np.ndarray, amount: float) -> np.ndarray:
    """``a`` with its axis 1 tilted towards axis 0, the column kept as long (MONAI keeps an sform whose columns match pixdim)."""
    o = a.copy()
    col = a[:3, 1] + amount * a[:3, 0] * np.linalg.norm(a[:3, 1]) / np.linalg.norm(a[:3, 0])
    o[:3, 1] = col / np.linalg.norm(col) * np.linalg.norm(a[:3, 1])
    return o


def write_kind(kind: str, path: Path, arr: np.ndarray, a: np.ndarray, shift) -> Path:
    """Write ``arr`` with the header of ``kind`` (``a``: the consistent matrix, ``shift``: how far the other lies)."""
    import nibabel as nib

    if kind == "nonorthogonal_nrrd":
        import itk

        path = path.with_name(path.name.replace(".nii.gz", ".nrrd"))
        b = _sheared(a, 0.25)
        flip = np.diag([-1.0, -1.0, 1.0])
        sp = np.linalg.norm(b[:3, :3], axis=0)
        img = itk.image_from_array(np.ascontiguousarray(arr.astype(np.float32).transpose(2, 1, 0)))
        img.SetSpacing([float(v) for v in sp])
        img.SetOrigin([float(v) for v in flip @ b[:3, 3]])
        img.SetDirection(itk.matrix_from_array(np.ascontiguousarray(flip @ b[:3, :3] / sp)))
        itk.imwrite(img, str(path))
        return path
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(arr.shape)
    hdr.set_data_dtype(np.float32)
    hdr.set_zooms(tuple(float(v) for v in np.linalg.norm(a[:3, :3], axis=0)))
    other = _other(a, shift, 0.05)
    if kind == "consistent":
        hdr.set_qform(a, code=1)
        hdr.set_sform(a, code=1)
    elif kind == "sform_qform":
        hdr.set_qform(other, code=1)
        hdr.set_sform(a, code=2)
    elif kind == "sform_scanner":
        hdr.set_qform(other, code=1)
        hdr.set_sform(a, code=1)
    elif kind == "qform_only_qfac":
        left = a.copy()
        left[:3, 2] *= -1.0
        hdr.set_qform(left, code=1)
        hdr["sform_code"] = 0
    elif kind == "no_codes":
        hdr["qform_code"] = 0
        hdr["sform_code"] = 0
    elif kind == "sheared_sform_qform":
        hdr.set_qform(other, code=1)
        hdr.set_sform(_sheared(a, 0.2), code=2)
    elif kind == "sheared_sform_only":
        hdr["qform_code"] = 0
        hdr.set_sform(_sheared(a, 0.2), code=2)
    elif kind == "tiny_shear_sform":
        hdr["qform_code"] = 0
        hdr.set_sform(_sheared(a, 7e-5), code=2)
    else:
        raise ValueError(f"unknown header kind {kind!r}; known: {list(KINDS)}")
    nib.save(nib.Nifti1Image(arr.astype(np.float32), None, hdr), str(path))
    return path


def make_case(kind: str, folder: Path, seed: int = 0) -> dict:
    """Fixed and moving files of ``kind`` (different offsets), a smooth known field, fixed voxel sample points."""
    import torch

    from monai_contreg.spatial.filters import gaussian_filter

    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    moving = gaussian_filter(torch.rand((1, 1, *M_SHAPE), generator=g, dtype=torch.float64), 1.2)[0, 0]
    moving = ((moving - moving.mean()) / moving.std() * 100.0).numpy()
    ddf = 1.5 * gaussian_filter(torch.randn((1, 3, *F_SHAPE), generator=g, dtype=torch.float64), 1.5)
    a_f, a_m = base_affines()
    fixed = write_kind(kind, folder / "fixed.nii.gz", np.zeros(F_SHAPE), a_f, (6.0, 0.0, 0.0))
    moving_p = write_kind(kind, folder / "moving.nii.gz", moving, a_m, (0.0, -4.0, 3.0))
    rng = np.random.default_rng(seed)
    vox = rng.uniform(1.0, np.asarray(F_SHAPE) - 2.0, size=(60, 3))
    return {"kind": kind, "fixed": str(fixed), "moving": str(moving_p), "ddf": ddf, "vox": vox, "folder": folder}


def export_case(case: dict, formats=(".h5", ".nii.gz", ".nrrd", ".mha")) -> dict:
    """Read the case's files as ``contreg register`` does, write the Learn2Reg field and every ITK form.

    Returns ``{"disp": path, "exports": {ext: path or the refusal's message}, "result": RegistrationResult}``.
    """
    from monai.data import MetaTensor
    import torch

    from monai_contreg.api import RegistrationResult, itk_readings, load_inputs
    from monai_contreg.errors import UserInputError

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the GeometryWarning of a two-way header: the point of the exercise
        data = load_inputs(case["fixed"], case["moving"], where="export_parity")
    a_f = np.asarray(data["fixed"].affine, dtype=np.float64)
    res = RegistrationResult(ddf=MetaTensor(case["ddf"].float(), affine=torch.as_tensor(a_f)),
                             moving_affine=np.asarray(data["moving"].affine, dtype=np.float64),
                             moving_shape=M_SHAPE, **itk_readings(data))
    folder = Path(case["folder"])
    out = {"disp": str(res.save(folder / "disp.nii.gz")), "exports": {}, "result": res}
    for ext in formats:
        try:
            out["exports"][ext] = str(res.save_itk(folder / f"tx{ext}"))
        except UserInputError as exc:
            out["exports"][ext] = f"refused: {exc}"
    return out


def contreg_warp(case: dict, exported: dict) -> tuple[np.ndarray, np.ndarray]:
    """``contreg warp --field`` of the moving image and of the fixed voxel points (moving voxels out)."""
    from monai_contreg.apply import apply_to_files
    from monai_contreg.data.keypoints import load_keypoints, save_keypoints
    from monai_contreg.io.images import load_image
    import torch

    folder = Path(case["folder"])
    save_keypoints(folder / "pts.csv", torch.as_tensor(case["vox"]))
    apply_to_files(field=exported["disp"], images=[(case["moving"], folder / "ours.nii.gz")],
                   points=[(folder / "pts.csv", folder / "ours.csv")], moving_reference=case["moving"])
    img = load_image(folder / "ours.nii.gz", dtype=torch.float64).as_tensor()[0].numpy()
    return img, load_keypoints(folder / "ours.csv").numpy()


def itk_apply(case: dict, path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ITK: the exported transform on the same files -> (warped ``[x, y, z]``, moving voxels, ITK moving affine)."""
    import itk

    if path.endswith(".h5"):
        tx = read_h5(path)
    else:  # the README recipe: the float image read, made double for the resample filter's transform type
        disp = itk.imread(path, pixel_type=itk.Vector[itk.F, 3])
        field = itk.image_from_array(itk.array_from_image(disp).astype(np.float64), is_vector=True)
        field.CopyInformation(disp)
        tx = itk.DisplacementFieldTransform[itk.D, 3].New()
        tx.SetDisplacementField(field)
    fi, mi = itk.imread(case["fixed"], itk.F), itk.imread(case["moving"], itk.F)
    f_aff, m_aff = itk_affine(fi), itk_affine(mi)
    return itk_warp(case["fixed"], case["moving"], tx), itk_map_voxels(tx, f_aff, m_aff, case["vox"]), m_aff


def compare(ours_img, ours_vox, theirs_img, theirs_vox, m_aff_tool, inside=None) -> dict:
    """Point error (mm in the tool's moving frame) and image differences on the voxels that map well inside.

    ``inside``: the fixed voxels that map into the moving image (default: where ``theirs_img`` is finite, ITK's
    NaN padding); ANTs pads with 0, so its images are compared where ITK's are finite (their points agree).
    """
    err = np.linalg.norm((theirs_vox - ours_vox) @ m_aff_tool[:3, :3].T, axis=-1)
    valid = np.isfinite(theirs_img) if inside is None else inside.copy()
    valid[:1], valid[-1:], valid[:, :1], valid[:, -1:], valid[:, :, :1], valid[:, :, -1:] = (False,) * 6
    diff = np.abs(theirs_img - ours_img)[valid]
    return {"point_mm_max": float(err.max()), "point_mm_mean": float(err.mean()),
            "image_max": float(diff.max()) if diff.size else float("nan"),
            "image_mean": float(diff.mean()) if diff.size else float("nan"), "image_voxels": int(diff.size)}


def run_kinds(kinds, work: Path, ants: str | None) -> dict:
    results = {}
    for kind in kinds:
        case = make_case(kind, work / kind)
        exported = export_case(case)
        row = {"what": KINDS[kind], "exports": {}}
        ours_img, ours_vox = contreg_warp(case, exported)
        inside = {}
        for ext, path in exported["exports"].items():
            if path.startswith("refused"):
                row["exports"][ext] = path
                continue
            theirs_img, theirs_vox, m_aff = itk_apply(case, path)
            inside[ext] = np.isfinite(theirs_img)
            row["exports"][ext] = {"itk": compare(ours_img, ours_vox, theirs_img, theirs_vox, m_aff)}
        if ants:
            np.save(Path(case["folder"]) / "vox.npy", case["vox"])
            paths = [p for e, p in exported["exports"].items() if e in (".h5", ".nii.gz") and not p.startswith("refused")]
            if paths:
                r = subprocess.run([ants, str(HERE), "--ants-worker", str(case["folder"]), case["fixed"], case["moving"],
                                    *paths], capture_output=True, text=True)
                if r.returncode != 0:
                    row["ants_error"] = (r.stderr.strip().splitlines() or ["?"])[-1]
                else:
                    info = json.loads(r.stdout.strip().splitlines()[-1])
                    for ext, key in ((".h5", "h5"), (".nii.gz", "nii")):
                        if key in info:
                            row["exports"][ext]["ants"] = compare(
                                ours_img, ours_vox, np.load(Path(case["folder"]) / f"ants_warped_{key}.npy"),
                                np.load(Path(case["folder"]) / f"ants_vox_{key}.npy"), np.asarray(info["moving_affine"]),
                                inside[ext])
                    row["ants_version"] = info.get("version", "")
        results[kind] = row
        for ext, r in row["exports"].items():
            if isinstance(r, str):
                print(f"{kind:20s} {ext:7s} {r[:150]}")
            else:
                for tool, c in r.items():
                    print(f"{kind:20s} {ext:7s} {tool:4s} points max {c['point_mm_max']:.2e} mm  image max "
                          f"{c['image_max']:.2e} mean {c['image_mean']:.2e} ({c['image_voxels']} voxels)")
    return results


# ----------------------------------------------------------------------------------------------------------------
# the issue's pair, through the command line only

def issue_pair(work: Path, ants: str | None) -> dict:
    import nibabel as nib
    import itk
    from scipy import ndimage as ndi

    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    n = (40, 40, 32)
    f = ndi.gaussian_filter(rng.standard_normal(n), 2.0)
    f = ((f - f.min()) / np.ptp(f) * 1300 - 1000).astype(np.float32)
    shift = np.array([2.4, -1.6, 1.2])  # voxels; moving(x) = fixed(x - shift): fixed x <-> moving x + shift
    m = ndi.shift(f.astype(np.float64), shift, order=3, mode="nearest").astype(np.float32)
    sform = np.diag([1.5, 1.5, 1.5, 1.0])
    qform = sform.copy()
    qform[:3, 3] = [6.0, 0.0, 0.0]  # the qform 6 mm away along x
    fimg = nib.Nifti1Image(f, sform)
    fimg.set_qform(qform, code=1)
    fimg.set_sform(sform, code=2)
    nib.save(fimg, work / "fixed.nii.gz")
    nib.save(nib.Nifti1Image(m, sform), work / "moving.nii.gz")
    run = lambda *a: subprocess.run(["contreg", *a], capture_output=True, text=True)  # noqa: E731
    fixed, moving = str(work / "fixed.nii.gz"), str(work / "moving.nii.gz")
    for p in ("disp.nii.gz", "tx.h5", "tx.nii.gz", "ours.nii.gz"):
        (work / p).unlink(missing_ok=True)
    r = run("register-native", fixed, moving, "-o", str(work / "disp.nii.gz"), "--itk", str(work / "tx.h5"),
            "--preset", "io-lr1", "--threads", "1")
    out = {"register_rc": r.returncode, "register_out": (r.stdout + r.stderr).strip().splitlines()[-3:]}
    if ants:  # the displacement-image form too, for ANTs (the same registration: deterministic on one thread)
        run("register-native", fixed, moving, "-o", str(work / "disp2.nii.gz"), "--itk", str(work / "tx.nii.gz"),
            "--preset", "io-lr1", "--threads", "1")
    w = run("warp", "--field", str(work / "disp.nii.gz"), "--image", moving, str(work / "ours.nii.gz"))
    out["warp_rc"] = w.returncode
    inside = (slice(4, -4),) * 3
    ours = np.asarray(nib.load(work / "ours.nii.gz").dataobj, dtype=np.float64)
    out["hu_before"] = float(np.abs(m - f)[inside].mean())
    out["hu_contreg_warp"] = float(np.abs(ours - f)[inside].mean())
    # contreg's correspondence: fixed voxel x -> moving voxel x + u(x) (both grids equal in the package's reading)
    disp = np.asarray(nib.load(work / "disp.nii.gz").dataobj, dtype=np.float64)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in n], indexing="ij"), -1)
    sel = np.zeros(n, bool)
    sel[inside] = True
    sel &= (grid.sum(-1) % 7) == 0  # a subsample of the inside voxels
    vox = grid[sel].astype(np.float64)
    v_contreg = vox + disp[sel]
    out["contreg_shift_error_vox"] = float(np.abs(disp[inside].reshape(-1, 3).mean(0) - shift).max())
    if (work / "tx.h5").is_file():
        tx = read_h5(str(work / "tx.h5"))
        theirs = itk_warp(fixed, moving, tx)
        valid = np.isfinite(theirs)[inside]
        out["hu_itk"] = float(np.abs(theirs - f)[inside][valid].mean())
        fi, mi = itk.imread(fixed, itk.F), itk.imread(moving, itk.F)
        v_itk = itk_map_voxels(tx, itk_affine(fi), itk_affine(mi), vox)
        err = np.linalg.norm((v_itk - v_contreg) @ itk_affine(mi)[:3, :3].T, axis=-1)
        out["itk_point_error_mm"] = {"mean": float(err.mean()), "max": float(err.max())}
    if ants and (work / "tx.h5").is_file():
        np.save(work / "vox.npy", vox)
        res = subprocess.run([ants, str(HERE), "--ants-worker", str(work), fixed, moving, str(work / "tx.h5"),
                              str(work / "tx.nii.gz")], capture_output=True, text=True)
        if res.returncode != 0:
            out["ants_error"] = res.stderr.strip().splitlines()[-1:]
        else:
            a = json.loads(res.stdout.strip().splitlines()[-1])
            for key in ("h5", "nii"):
                if key not in a:
                    continue
                warped = np.load(work / f"ants_warped_{key}.npy")
                v_ants = np.load(work / f"ants_vox_{key}.npy")
                err = np.linalg.norm((v_ants - v_contreg) @ np.asarray(a["moving_affine"])[:3, :3].T, axis=-1)
                out[f"hu_ants_{key}"] = float(np.abs(warped - f)[inside].mean())
                out[f"ants_{key}_point_error_mm"] = {"mean": float(err.mean()), "max": float(err.max())}
    return out


# ----------------------------------------------------------------------------------------------------------------
# ANTs worker: runs in the ANTs venv (no monai_contreg there)

def ants_worker(work: Path, fixed: str, moving: str, *transforms: str) -> None:
    import ants

    fi, mi = ants.image_read(fixed), ants.image_read(moving)

    def aff(img):
        out = np.eye(4)
        flip = np.diag([-1.0, -1.0, 1.0])
        out[:3, :3] = flip @ np.asarray(img.direction) @ np.diag(img.spacing)
        out[:3, 3] = flip @ np.asarray(img.origin)
        return out

    fa, ma = aff(fi), aff(mi)
    vox = np.load(work / "vox.npy")
    import pandas as pd

    result = {"fixed_affine": fa.tolist(), "moving_affine": ma.tolist(), "version": getattr(ants, "__version__", "")}
    for path in transforms:
        if not Path(path).is_file():
            continue
        key = "h5" if path.endswith(".h5") else "nii"
        warped = ants.apply_transforms(fixed=fi, moving=mi, transformlist=[path], interpolator="linear")
        np.save(work / f"ants_warped_{key}.npy", warped.numpy().astype(np.float64))
        pts = to_world(fa, vox) * LPS
        df = pd.DataFrame(pts, columns=["x", "y", "z"])
        moved = ants.apply_transforms_to_points(3, df, [path]).to_numpy()[:, :3] * LPS
        np.save(work / f"ants_vox_{key}.npy", to_voxel(ma, moved))
        result[key] = True
    print(json.dumps(result))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--issue-pair", type=Path, help="rebuild and measure the issue's pair in this folder")
    p.add_argument("--ants", help="a Python interpreter with antspyx installed")
    p.add_argument("--kinds", default="all", help=f"comma-separated header kinds (default all: {', '.join(KINDS)})")
    p.add_argument("--work", help="keep the files in this folder (default: a temporary one)")
    p.add_argument("--ants-worker", nargs="+", help=argparse.SUPPRESS)
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args(argv)
    if args.ants_worker:
        work, fixed, moving, *tx = args.ants_worker
        ants_worker(Path(work), fixed, moving, *tx)
        return 0
    if args.issue_pair:
        res = issue_pair(args.issue_pair, args.ants)
    else:
        import tempfile

        kinds = list(KINDS) if args.kinds == "all" else [k.strip() for k in args.kinds.split(",")]
        with tempfile.TemporaryDirectory() as tmp:
            res = run_kinds(kinds, Path(args.work) if args.work else Path(tmp), args.ants)
    print(json.dumps(res, indent=1))
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
