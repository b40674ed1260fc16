"""``contreg quality`` and the quality line of ``contreg register`` / ``register-native`` / ``run`` (see
:mod:`monai_contreg.evaluation.quality`); the arguments are parsed in :mod:`monai_contreg.cli`."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from ..errors import UserInputError

__all__ = ["cmd_quality", "print_quality", "quality_text", "suspect_pairs"]

logger = logging.getLogger("monai_contreg.cli")


def print_quality(args: argparse.Namespace, res, cfg) -> dict | None:
    """After a registration: estimate its error, print the one line, write ``--quality-json``; ``None`` when
    ``--no-quality``. A failure of the estimate is logged and printed, never fails the command."""
    if getattr(args, "no_quality", False):
        return None
    t0 = time.perf_counter()
    try:
        if getattr(res, "inputs", None):  # the images the registration loaded: nothing read twice
            rep = res.quality(auto_mask=bool(cfg.preprocess.auto_mask))
        else:
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


def cmd_quality(args: argparse.Namespace, request=None) -> int:
    """``contreg quality``: estimate a field's error from the images alone; one line on stdout, ``--json``/``--html``.

    Raises:
        UserInputError: not exactly one of FIELD and ``--transform``; unreadable inputs or unwritable outputs.
    """
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
