"""``contreg quality`` and the quality line of ``contreg register`` / ``register-native`` (see
:mod:`monai_contreg.evaluation.quality`)."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from ..errors import UserInputError

__all__ = ["add_quality_option", "add_quality_parser", "print_quality", "quality_text", "suspect_pairs"]

logger = logging.getLogger("monai_contreg.cli")


def add_quality_option(p: argparse.ArgumentParser) -> None:
    """``--no-quality`` and ``--quality-json`` on a registering subcommand."""
    p.add_argument("--no-quality", action="store_true",
                   help="do not estimate the field's error after registering (default: estimate it, see 'contreg quality')")
    p.add_argument("--quality-json", help="write the error estimate (as 'contreg quality --json') here")


def print_quality(args: argparse.Namespace, res, cfg) -> dict | None:
    """After a registration: estimate its error, print the one line, write ``--quality-json``; ``None`` when
    ``--no-quality``. A failure of the estimate is logged and printed, never fails the command."""
    if getattr(args, "no_quality", False):
        return None
    t0 = time.perf_counter()
    try:
        rep = res.quality(
            args.fixed, args.moving, fixed_mask=args.fixed_mask, moving_mask=args.moving_mask,
            auto_mask=bool(cfg.preprocess.auto_mask), series=getattr(args, "series", None) or None,
        )
    except Exception as exc:  # the field is written; an estimate that cannot be made is reported, not fatal
        logger.info("quality estimate failed", exc_info=True)
        print(f"quality: not estimated ({type(exc).__name__}: {exc})")
        return None
    seconds = time.perf_counter() - t0
    print(f"quality: {rep.line()}  [{seconds:.1f}s]")
    out = rep.to_dict()
    out["seconds"] = seconds
    if getattr(args, "quality_json", None):
        Path(args.quality_json).write_text(json.dumps(out, indent=2) + "\n")
    return out


def quality_text(q: dict) -> str:
    """Short text of a stored estimate (:meth:`QualityReport.to_dict`): ``"0.42 mm (0.30-0.61) ok"``."""
    if "error" in q:
        return f"not estimated ({q['error']})"
    lo, hi = q["interval_mm"]
    return f"estimated error {q['estimated_error_mm']:.2f} mm ({lo:.2f}-{hi:.2f}) {q['verdict']} [{q['seconds']:.1f}s]"


def suspect_pairs(outcomes) -> list[str]:
    """``"KEY: verdict (reasons)"`` of the outcomes whose estimate is ``check`` or ``failed``."""
    out = []
    for o in outcomes:
        q = getattr(o, "quality", None)
        if q and q.get("verdict") in ("check", "failed"):
            why = "; ".join(q.get("reasons") or [])
            out.append(f"{o.key}: {q['verdict']}" + (f" ({why})" if why else ""))
    return out


def _cmd_quality(args: argparse.Namespace) -> int:
    from ..preflight import check_input_file, check_output_file
    from .quality import estimate_quality

    if (args.field is None) == (args.transform is None):
        raise UserInputError("quality: give the field (FIELD, a Learn2Reg file) or --transform (an ITK transform), exactly one.")
    for option, path in (("FIXED", args.fixed), ("MOVING", args.moving), ("FIELD", args.field), ("--transform", args.transform),
                         ("--fixed-mask", args.fixed_mask), ("--moving-mask", args.moving_mask)):
        if path:
            check_input_file("quality", option, path)
    for option, path in (("--json", args.json), ("--html", args.html)):
        if path:
            check_output_file("quality", option, path)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from ..kernels import load_extension

    load_extension()  # the compiled CPU kernels (MIND's box filter): built or loaded once, outside the timing
    rep = estimate_quality(
        args.fixed, args.moving, field_path=args.field, transform=args.transform, fixed_mask=args.fixed_mask,
        moving_mask=args.moving_mask, auto_mask=not args.no_auto_mask, keep_maps=bool(args.html),
        series=args.series or None,
    )
    print(rep.line())
    if args.json:
        Path(args.json).write_text(json.dumps(rep.to_dict(), indent=2) + "\n")
        print(f"wrote {args.json}")
    if args.html:
        from .html_report import write_html_report

        name = Path(args.field or args.transform).name
        path = write_html_report(args.html, [{"name": name, "quality": rep}], title=f"contreg quality: {name}")
        print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return 0


def add_quality_parser(sub) -> None:
    """The ``quality`` subcommand."""
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
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--series", action="append", default=[], metavar="UID", help="Series Instance UID of a DICOM folder; repeatable")
    p.set_defaults(func=_cmd_quality)
