"""Command line ``contreg``: the argument parser and its checks, which import nothing heavy.

```text
    contreg register FIXED MOVING -o disp.nii.gz [--fixed-mask M] [--moving-mask M] [--preset io]
                     [--config cfg.yaml] [--set optim.schedule.peak_lr=10 ...] [--device cuda]
                     [--no-auto-mask] [--series UID] [--checkpoint-dir D [--resume]]
    contreg mask CT -o mask.nii.gz [--series UID]   (the automatic lung mask, to inspect it)
    contreg demo [--preset io] [--device cpu] [--out DIR]
    contreg run DATASET [--split val] -o OUT/ [--preset io] [--format nii.gz|npz] [--overwrite] [--evaluate]
                [--nproc-per-node N] [--backend gloo|nccl]   (Learn2Reg; also under torchrun ... -m monai_contreg.cli run)
    contreg submit OUT/ -o submission.zip --dataset DATASET [--split val] [--format nii.gz|npz]
    contreg evaluate DATASET OUT/|submission.zip [--split val] [--json F] [--csv F] [--report DIR]
    contreg download nlst DEST [--url URL] [--sha256 HEX] [--no-extract]
    contreg tune DATASET [--split val] -o best.yaml [--trials N] [--pairs 0101,0102] [--search-steps S]
                 [--holdout 0103,0104] [--storage URL] [--study NAME] [--objective auto|tre|dice] [--max-sdlogj 0.1]
                 [--nproc-per-node K]   (Optuna; also under torchrun ... -m monai_contreg.cli tune)
```

:func:`main` parses the arguments and checks every value that can be checked without the inputs (memory sizes,
spacings, device names, presets, formats, backends, option combinations) with this module's imports only
(argparse and :mod:`monai_contreg.options`), so that ``--help`` and an argument error answer at once; then it
builds the command's :class:`~monai_contreg.request.RunRequest` once and hands both to
:func:`monai_contreg.commands.run_command`, which imports what the command needs. Every failure ends in
:func:`monai_contreg.errors.cli_error`: one line on stderr and the exit status of the table in
``docs/guides/cli.md`` (2 user error, 1 a failed pair or the environment, 3 diverged, 130 interrupted).
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from typing import Any

from .errors import UserInputError, cli_error
from .options import choose_name, parse_device, parse_memory, parse_spacing
from .request import RunRequest

__all__ = ["PRESET_NAMES", "build_parser", "main"]

#: The presets ``--preset`` accepts (:func:`monai_contreg.methods.presets.preset_names`; a test keeps them equal).
PRESET_NAMES = ("io", "io-authors", "io-lr1", "io-lr15", "convex", "convexadam", "convex+io", "refine", "accurate", "unaligned")
#: The values of ``--similarity`` and ``--modality`` (:class:`monai_contreg.modes.Similarity`,
#: :class:`monai_contreg.modes.Modality`; a test keeps them equal).
SIMILARITY_NAMES = ("mind", "lncc", "mi")
MODALITY_NAMES = ("auto", "ct", "mr")
#: Field formats of ``run``/``submit`` (:data:`monai_contreg.workflow.FIELD_FORMATS`).
FIELD_FORMATS = (".nii.gz", ".npz")
#: Backends of distributed ``run``/``tune`` (:data:`monai_contreg.distributed.BACKENDS`).
BACKENDS = ("gloo", "nccl")
#: Objectives of ``tune`` (:data:`monai_contreg.tuning.OBJECTIVES`).
OBJECTIVES = ("auto", "tre", "dice")
#: Point spaces of ``warp --points-space``.
POINT_SPACES = ("voxel", "world")

_VERBOSE = ("-v", "-vv", "-vvv", "--verbose")


class _Parser(argparse.ArgumentParser):
    """argparse's parser; an unrecognised ``-v`` after the command gets a hint where it goes."""

    def error(self, message: str):  # type: ignore[override]
        if "unrecognized arguments" in message and any(t in _VERBOSE for t in message.split(": ", 1)[-1].split()):
            message += " (-v/--verbose goes before the command: contreg -v COMMAND ...)"
        super().error(message)


def _argument_type(parse, option: str):
    """An argparse ``type=`` from a parser of :mod:`monai_contreg.options` (argparse prints
    ``argument OPTION: ...`` and exits with 2)."""

    def convert(text: str):
        try:
            return parse(text, option)
        except UserInputError as exc:
            raise argparse.ArgumentTypeError(str(exc).split(": ", 1)[1]) from exc

    return convert


_spacing_option = _argument_type(parse_spacing, "--working-spacing")
_device_option = _argument_type(parse_device, "--device")


def _checked_memory(text: str, option: str) -> str:
    parse_memory(option, text)  # the text is kept: RunRequest turns it into bytes
    return text


_memory_option = _argument_type(_checked_memory, "--max-memory")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def check_arguments(args: argparse.Namespace) -> None:
    """The checks of parsed arguments that need no input file and no heavy import (see the module docstring).

    Raises:
        UserInputError: naming the option and what was expected.
    """
    if "preset" in vars(args):
        choose_name("--preset", "preset", args.preset, PRESET_NAMES)
    if getattr(args, "similarity", None) is not None:
        choose_name("--similarity", "similarity", args.similarity, SIMILARITY_NAMES)
    if getattr(args, "modality", None) is not None:
        choose_name("--modality", "modality", args.modality, MODALITY_NAMES)
    if getattr(args, "format", None) is not None:
        fmt = args.format if args.format.startswith(".") else f".{args.format}"
        if fmt not in FIELD_FORMATS:
            raise UserInputError(f"--format: unknown field format {args.format!r}; expected one of {list(FIELD_FORMATS)}.")
    if getattr(args, "backend", None) is not None:
        choose_name("--backend", "backend", args.backend, BACKENDS)
    if "objective" in vars(args):
        choose_name("--objective", "objective", args.objective, OBJECTIVES)
    if "points_space" in vars(args):
        choose_name("--points-space", "points space", args.points_space, POINT_SPACES)
    if getattr(args, "nproc_per_node", None) is not None and args.nproc_per_node < 1:
        raise UserInputError(f"--nproc-per-node: must be a whole number of processes >= 1, got {args.nproc_per_node}.")
    if getattr(args, "master_port", None) is not None and not 0 < args.master_port < 65536:
        raise UserInputError(f"--master-port: expected a TCP port number in 1..65535, got {args.master_port}.")
    if getattr(args, "sha256", None) is not None and re.fullmatch(r"[0-9a-fA-F]{64}", args.sha256.strip()) is None:
        raise UserInputError(f"--sha256: expected a SHA-256 digest, 64 hexadecimal digits, got {args.sha256!r}.")
    if getattr(args, "eval_json", None) and not args.evaluate:
        raise UserInputError("--eval-json: give --evaluate too (it says where the evaluation is written).")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="io", help=f"method preset, one of {list(PRESET_NAMES)} (default: io)")
    p.add_argument("--config", help="YAML/JSON file with config overrides (applied on top of the preset)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one option, e.g. optim.schedule.peak_lr=10")
    p.add_argument("--device", default=None, type=_device_option, help="cpu, cuda, cuda:1 ... (default: cpu)")
    p.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--similarity", default=None, metavar="NAME",
                   help="similarity of every dense stage: mind (MIND-SSC, the preset's default), lncc or mi "
                        "(MONAI's LNCC / mutual information, for pairs of different contrasts); features.similarity")
    p.add_argument("--modality", default=None, metavar="NAME",
                   help="auto (default: CT recognised from its values), ct or mr; the HU floor, HU window and "
                        "automatic lung mask apply to CT only, MR is normalised by percentiles; preprocess.modality")
    p.add_argument("--no-auto-mask", action="store_true",
                   help="do not segment the lungs of images given without a mask (presets that mask their inputs "
                        "do so by default; see 'contreg mask')")
    p.add_argument("--require-mask", action="store_true",
                   help="stop (exit 2) when an image given without a mask has no plausible lung, instead of "
                        "registering unmasked with a warning")
    p.add_argument("--progress", action="store_true",
                   help="show a progress bar over optimisation steps even when stderr is not a terminal")
    p.add_argument("--quiet", action="store_true", help="no progress bar (default: one on a terminal)")
    p.add_argument("--max-memory", metavar="SIZE", type=_memory_option,
                   help="memory the registration may use, e.g. 8G or 500M (default: 80%% of the available RAM, or of "
                        "the GPU's free memory); checked against an estimate before the run starts")


def _checkpoint_options(p: argparse.ArgumentParser, per_pair: bool = False) -> None:
    """``--checkpoint-dir``, ``--checkpoint-every``, ``--resume`` of a command that optimises (engine.checkpoint_*)."""
    g = p.add_argument_group(
        "checkpoints", "save the optimisation's state (field, optimiser, schedule, step, handlers) every N steps; "
        "after an interruption the same command with --resume continues from the last checkpoint and ends with the "
        "field of an uninterrupted run" + (" (one set of checkpoints per pair, named by the pair; pairs without "
                                           "one start from step 0)" if per_pair else ""))
    g.add_argument("--checkpoint-dir", metavar="DIR", help="folder for the checkpoints (engine.checkpoint_dir)")
    g.add_argument("--checkpoint-every", metavar="N", type=_positive_int,
                   help="steps between checkpoints (engine.checkpoint_every; default: the config's, 50)")
    g.add_argument("--resume", action="store_true",
                   help="continue from the latest checkpoint in --checkpoint-dir (engine.resume)")


def _add_learn2reg_parsers(sub) -> None:
    p = sub.add_parser("run", help="register every pair of a Learn2Reg split (resumable)")
    p.add_argument("dataset", help="Learn2Reg dataset folder (with *_dataset.json) or the json file")
    p.add_argument("--split", default="val", help="training_paired_images | registration_val | registration_test, or train/val/test (default: val)")
    p.add_argument("-o", "--output", required=True, help="output folder for disp_FFFF_MMMM fields and runtimes.json")
    p.add_argument("--format", default="nii.gz", help="field format: nii.gz (float32) or npz (float16)")
    p.add_argument("--overwrite", action="store_true", help="redo pairs whose field exists (default: skip them)")
    p.add_argument("--no-bar", action="store_true", help="no progress bar over pairs (none in distributed runs)")
    p.add_argument("--evaluate", action="store_true",
                   help="when all pairs are done, evaluate the folder once (as 'contreg evaluate') and print a summary")
    p.add_argument("--eval-json", help="where --evaluate writes its results (default: OUT/evaluation.json)")
    p.add_argument("--no-quality", action="store_true", help="do not estimate each pair's error (see 'contreg quality')")
    p.add_argument("--fail-on-suspect", action="store_true", help="exit 1 when a pair's estimate is 'check' or 'failed'")
    g = p.add_argument_group(
        "distributed", "shard the pairs over processes with ignite.distributed (rank r registers pairs r::N); "
        "under torchrun (torchrun --nproc_per_node N -m monai_contreg.cli run ...) leave --nproc-per-node out; "
        "--threads is per process (default: CPUs // processes per node)")
    g.add_argument("--nproc-per-node", type=int, help="spawn this many processes (ranks) on this machine")
    g.add_argument("--backend", help="gloo (CPU processes, or GPUs) or nccl (one process per GPU, cuda:LOCAL_RANK); "
                                     "default: nccl with --device cuda, else gloo")
    g.add_argument("--master-port", type=int, help="rendezvous port of spawned processes (default: a free port)")
    _common(p)
    _checkpoint_options(p, per_pair=True)
    p.set_defaults(handler="_cmd_run")

    p = sub.add_parser("submit", help="zip the fields of a split in the official Learn2Reg layout")
    p.add_argument("fields", help="folder of fields written by 'contreg run'")
    p.add_argument("-o", "--output", required=True, help="submission zip")
    p.add_argument("--dataset", required=True, help="Learn2Reg dataset folder or json (for the pairs and expected shape)")
    p.add_argument("--split", default="val", help="split (default: val)")
    p.add_argument("--format", default="nii.gz", help="nii.gz or npz (float16)")
    p.set_defaults(handler="_cmd_submit")

    p = sub.add_parser("evaluate", help="TRE, SDlogJ, folding, Dice, HD95 of the fields of a split")
    p.add_argument("dataset", help="Learn2Reg dataset folder or json")
    p.add_argument("fields", help="folder of fields or a submission zip")
    p.add_argument("--split", default="val", help="split (default: val)")
    p.add_argument("--json", help="write the results (official Learn2Reg layout: cases + aggregates) here")
    p.add_argument("--csv", help="write a per-pair table here")
    p.add_argument("--report", help="write a QA report (PNG per pair + index.md) into this folder")
    p.add_argument("--html", help="write one self-contained interactive HTML report (TRE, landmark-free estimate, "
                                  "slices of every pair) here")
    p.add_argument("--runtimes", help="run log with per-pair seconds (default: runtimes.json beside the fields)")
    p.add_argument("--no-mask", action="store_true", help="SDlogJ over the whole grid instead of the fixed mask")
    p.add_argument("--exclude-outside-keypoints", action="store_true",
                   help="leave keypoints outside their image out of the TRE (with a warning, the count per pair in "
                        "the JSON) instead of stopping with an error")
    p.set_defaults(handler="_cmd_evaluate")

    p = sub.add_parser("download", help="download (resumably, checksum-verified) and extract a Learn2Reg dataset")
    p.add_argument("dataset", help="dataset name: nlst")
    p.add_argument("dest", help="folder for the archive and the extracted files")
    p.add_argument("--url", help="override the archive's address (a mirror)")
    p.add_argument("--sha256", help="expected SHA-256 of the archive (hex)")
    p.add_argument("--no-extract", action="store_true", help="keep the archive packed")
    p.set_defaults(handler="_cmd_download")


def _quality_options(p: argparse.ArgumentParser) -> None:
    """``--no-quality`` and ``--quality-json`` of a command that registers one pair."""
    p.add_argument("--no-quality", action="store_true",
                   help="do not estimate the field's error after registering (default: estimate it, see 'contreg quality')")
    p.add_argument("--quality-json", help="write the error estimate (as 'contreg quality --json') here")


def _add_quality_parser(sub) -> None:
    p = sub.add_parser(
        "quality", help="estimate a field's registration error without landmarks (a calibrated model, not a measurement)",
        description="Estimate the mean registration error (mm) of a field from the images alone: MIND-SSC mismatch "
                    "before/after, a residual-shift consistency test, mask overlap, Jacobian statistics, mapped out of "
                    "the image; a log-linear model calibrated on pairs with known answers gives the estimate, a "
                    "split-conformal interval and a verdict ok / check / failed (docs/guides/quality.md).")
    p.add_argument("fixed", help="fixed image file or DICOM folder")
    p.add_argument("moving", help="moving image file or DICOM folder")
    p.add_argument("field", nargs="?", help="Learn2Reg field on the fixed grid (.nii.gz, .nii, .npz; "
                                            "voxels, fixed -> moving); or give --transform")
    p.add_argument("--transform", help="ITK displacement field transform (.h5) or displacement image (LPS mm) instead of FIELD")
    p.add_argument("--fixed-mask", help="fixed mask: the region the error is estimated in (default: the automatic lung mask, else the body)")
    p.add_argument("--moving-mask", help="moving mask (for the Dice signal)")
    p.add_argument("--no-auto-mask", action="store_true", help="no automatic lung mask: without --fixed-mask the region is the body")
    p.add_argument("--json", help="write estimated_error_mm, its interval, the verdict and the raw signals here")
    p.add_argument("--html", help="write a self-contained interactive HTML report here")
    p.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    _series_option(p)
    p.set_defaults(handler="_cmd_quality")


def _series_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--series", action="append", default=[], metavar="UID",
                   help="Series Instance UID to read from a DICOM folder (default: the series with the most slices "
                        "of one geometry; the folder's series are listed in a warning); repeatable")


def _add_geometry_parsers(sub) -> None:
    p = sub.add_parser("register-native", help="register images on different grids (any ITK/NIfTI format, DICOM folders)")
    p.add_argument("fixed", help="fixed image: file or DICOM series folder")
    p.add_argument("moving", help="moving image: file or DICOM series folder")
    p.add_argument("-o", "--output", help="Learn2Reg field on the fixed grid (.nii.gz, .nii, .npz; fixed voxels)")
    p.add_argument("--itk", help="ITK displacement field transform (.h5) or displacement image (.nii.gz, .nrrd, .mha), LPS mm")
    p.add_argument("--itk-affine", help="the affine stage's map alone as an ITK affine transform (.txt, .tfm, .mat, .h5); "
                                        "needs an affine stage (preset unaligned, or added for an unaligned pair)")
    p.add_argument("--fixed-mask", help="fixed image mask file")
    p.add_argument("--moving-mask", help="moving image mask file")
    p.add_argument("--working-spacing", type=_spacing_option, help="working grid spacing in mm, one value or three comma-separated (default: the preset's design spacing, field.design_spacing)")
    _series_option(p)
    _common(p)
    _checkpoint_options(p)
    _quality_options(p)
    p.set_defaults(handler="_cmd_register_native")

    p = sub.add_parser("mask", help="segment the lungs of a CT (the automatic mask of the masking presets)")
    p.add_argument("image", help="CT in HU: image file or DICOM series folder")
    p.add_argument("-o", "--output", required=True, help="mask image (.nii.gz, .nii, .nrrd, .mha; uint8, 1 = lung)")
    p.add_argument("--require-mask", action="store_true",
                   help="accepted as on the registering commands; always on here: no plausible lung is an error (exit 2)")
    _series_option(p)
    p.set_defaults(handler="_cmd_mask")

    p = sub.add_parser("warp", help="apply a field or ITK transform to images, label maps and point sets")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--field", help="Learn2Reg field file (voxels of the fixed grid, fixed -> moving)")
    src.add_argument("--transform", help="ITK displacement field transform (.h5) or displacement image (LPS mm)")
    p.add_argument("--reference", help="fixed image (needed for .npz fields; otherwise checked against the field)")
    p.add_argument("--image", nargs=2, action="append", metavar=("IN", "OUT"), help="moving image to warp (linear); repeatable")
    p.add_argument("--labels", nargs=2, action="append", metavar=("IN", "OUT"), help="moving label map to warp (nearest); repeatable")
    p.add_argument("--points", nargs=2, action="append", metavar=("IN", "OUT"), help="CSV of fixed points x,y,z mapped to the moving image; repeatable")
    p.add_argument("--points-space", default="voxel", help="voxel (default) or world (mm, RAS unless --lps)")
    p.add_argument("--moving-reference", help="moving image: voxel points are written in its grid")
    p.add_argument("--lps", action="store_true", help="world points are in ITK's LPS frame")
    p.set_defaults(handler="_cmd_warp")


def _add_tune_parser(sub) -> None:
    p = sub.add_parser(
        "tune", help="search a dataset's best settings with Optuna (resumable; writes a config for --config)",
        description="Tune the registration settings on a Learn2Reg split with Optuna (TPE sampler, median pruner): "
                    "objective mean keypoint TRE (else Dice), SDlogJ/folding as feasibility constraints, ties broken "
                    "by time. The study lives in a SQLite file beside the output (or --storage): the same command "
                    "resumes it. Writes OUT.yaml (the best config), OUT.trials.csv, OUT.history.png, "
                    "OUT.importances.png and OUT.summary.json.")
    p.add_argument("dataset", help="Learn2Reg dataset folder (with *_dataset.json) or the json file")
    p.add_argument("--split", default="val", help="split whose pairs are tuned on (default: val)")
    p.add_argument("-o", "--output", required=True, help="best config YAML; the other outputs are written beside it")
    p.add_argument("--trials", type=int, default=20, help="trials to finish in the study, earlier runs' included (default: 20)")
    p.add_argument("--pairs", help="tune on these pairs of the split only: keys or fixed case ids, comma-separated (0101,0102)")
    p.add_argument("--holdout", help="after the search, compare the tuned config with the base on these pairs (full length)")
    p.add_argument("--space", help="search space YAML/JSON: dotted config keys -> {low, high[, log, step]} or choices "
                                   "(multilevel.levels.1.reg_weight: a field of level 1; default: the preset's default space, io and accurate have one)")
    p.add_argument("--objective", default="auto", help="auto (tre with keypoints, else dice), tre or dice")
    p.add_argument("--max-sdlogj", type=float, default=0.1, help="feasible trials keep every pair's SDlogJ <= this (default: 0.1)")
    p.add_argument("--max-folding", type=float, default=0.0, help="... and every pair's folding %% <= this (default: 0)")
    p.add_argument("--search-steps", type=int, help="trials run schedules shortened to this many steps (breakpoints "
                                                     "scaled; a multi-level config: its longest level, the others in "
                                                     "proportion); the winner is re-run at full length")
    p.add_argument("--no-final-run", action="store_true", help="skip the winner's full-length re-run")
    p.add_argument("--storage", help="Optuna RDB URL (sqlite:///f.db, postgresql://...); default: OUT.study.db beside the output")
    p.add_argument("--study", help="study name (default: contreg-<dataset>-<split>-<preset>)")
    p.add_argument("--seed", type=int, default=0, help="TPE sampler seed (worker r: seed + r; default 0)")
    p.add_argument("--report-every", type=int, default=10, help="steps between TRE reports to the pruner (default: 10)")
    p.add_argument("--tie-tolerance", type=float, help="objective difference counted as a tie, won by the faster trial "
                                                      "(default: 0.01 mm TRE, 0.001 Dice)")
    p.add_argument("--heartbeat", type=int, default=10, help="seconds between a running trial's heartbeats; a trial "
                                                             "silent for 3 is marked failed and re-queued (default: 10)")
    g = p.add_argument_group("workers", "several processes on one study, each taking trials until the total is reached: "
                                        "--nproc-per-node K here, or torchrun ... -m monai_contreg.cli tune ... (also "
                                        "several machines on one --storage URL); --threads is per process")
    g.add_argument("--nproc-per-node", type=int, help="spawn this many worker processes")
    g.add_argument("--backend", help="gloo (default) or nccl")
    g.add_argument("--master-port", type=int, help="rendezvous port of spawned workers (default: a free port)")
    _common(p)
    p.set_defaults(handler="_cmd_tune")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="contreg", description="Continuous instance-optimisation image registration",
                     epilog="Exit status: 0 success, 2 user error (bad option, file, geometry, configuration), 1 a "
                            "failed pair of 'run' or an environment failure, 3 a diverged registration, 130 "
                            "interrupted.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log progress (-v info, -vv debug)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("register", help="register one pair and write a Learn2Reg displacement field")
    p.add_argument("fixed", help="fixed image file or DICOM folder")
    p.add_argument("moving", help="moving image file or DICOM folder (same grid as the fixed image)")
    p.add_argument("-o", "--output", required=True, help="output field: .nii.gz, .nii or .npz (Learn2Reg layout)")
    p.add_argument("--fixed-mask", help="fixed image mask file")
    p.add_argument("--moving-mask", help="moving image mask file")
    _series_option(p)
    _common(p)
    _checkpoint_options(p)
    _quality_options(p)
    p.set_defaults(handler="_cmd_register")

    p = sub.add_parser("demo", help="register the built-in synthetic pair and print TRE before/after")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic pair")
    p.add_argument("--out", help="folder to write the field and a JSON summary to")
    _common(p)
    p.set_defaults(handler="_cmd_demo")
    _add_learn2reg_parsers(sub)
    _add_geometry_parsers(sub)
    _add_tune_parser(sub)
    _add_quality_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``contreg`` with ``argv`` (default ``sys.argv[1:]``); return the exit status.

    ``--help`` and argparse's own errors (unknown option, missing argument, a value of the wrong form) exit through
    ``SystemExit`` (0 and 2), as argparse does; every other failure is returned (see the module docstring).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING if args.verbose == 0 else logging.INFO if args.verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    if args.verbose == 0:
        logging.getLogger("ignite").setLevel(logging.WARNING)
        # ignite logs an exception that ends a run before re-raising it; the CLI prints it once, below
        logging.getLogger("ignite.engine.engine.Engine").setLevel(logging.CRITICAL)
    try:
        check_arguments(args)
        request = RunRequest.from_args(args)  # the one request of this command
        from .commands import run_command

        return run_command(args, request)
    except BaseException as exc:  # the one handler of every command: user errors are one line (errors.cli_error)
        code = cli_error(args.command, exc, args.verbose)
        if code is None:  # a programming error: keep its traceback
            raise
        return code


def __getattr__(name: str) -> Any:
    # the command implementations moved to monai_contreg.commands; their old names here load it on first use
    if name in ("_config", "_report_pair"):
        from . import commands

        return getattr(commands, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
