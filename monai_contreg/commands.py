"""The commands of ``contreg``: what each subcommand does once :mod:`monai_contreg.cli` has parsed and checked its
arguments.

This module is imported only when a command runs (the parser answers ``--help`` and argument errors without it);
each command imports the parts of the package it needs. Every command is called as ``command(args, request)``:
``args`` the parsed arguments, ``request`` the :class:`~monai_contreg.request.RunRequest` built once from them
(device, threads, memory limit, progress, quiet, verbosity), which the commands read instead of ``args`` for
those options. :func:`run_command` applies the request's process-wide parts (torch threads; the device checked
against this torch installation) before the command starts.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from .errors import UserInputError
from .preflight import check_input_file, check_output_dir, check_output_file, check_pair, field_bytes, read_header
from .request import RunRequest

__all__ = ["run_command"]

logger = logging.getLogger("monai_contreg.cli")

#: Grid of ``contreg demo``'s synthetic pair (voxels of 2 mm).
DEMO_SHAPE = (96, 80, 96)


def run_command(args: argparse.Namespace, request: RunRequest) -> int:
    """Run the command of ``args`` under ``request``: torch's CPU threads set and the device checked first.

    Raises:
        UserInputError: ``--device`` names a device this torch cannot use; whatever the command raises.
    """
    if "device" in vars(args):  # every command that accepts --device: refused at once when unusable here
        request.torch_device()
    if "threads" in vars(args) and request.threads:  # the whole process (loading, features, optimisation)
        import torch

        torch.set_num_threads(request.threads)
    return int(globals()[args.handler](args, request) or 0)


def _config(args: argparse.Namespace, request: RunRequest | None = None):
    """The command's :class:`~monai_contreg.methods.config.RegistrationConfig`: ``--preset``, then ``--config``,
    then ``--set``, then the request's threads, progress and checkpoints, ``--similarity``, ``--modality`` and
    ``--no-auto-mask``."""
    from .methods.config import RegistrationConfig
    from .methods.presets import get_preset

    request = RunRequest.from_args(args) if request is None else request
    cfg = get_preset(args.preset)
    if args.config:
        cfg = RegistrationConfig.from_file(args.config, base=cfg)
    if args.set:
        cfg = cfg.with_overrides(args.set)
    if request.threads:
        cfg.engine.num_threads = request.threads
    if request.progress:
        cfg.engine.progress = True
    if request.checkpoint_dir is not None:  # --checkpoint-dir / --checkpoint-every / --resume (register, run)
        cfg.engine.checkpoint_dir = request.checkpoint_dir
        cfg.engine.resume = request.resume or cfg.engine.resume
    if request.checkpoint_every is not None:
        cfg.engine.checkpoint_every = request.checkpoint_every
    if getattr(args, "similarity", None):
        cfg.set("features.similarity", args.similarity)
    if getattr(args, "modality", None):
        cfg.set("preprocess.modality", args.modality)
    if getattr(args, "no_auto_mask", False):
        cfg.preprocess.auto_mask = False
    if getattr(args, "require_mask", False):
        cfg.preprocess.require_mask = True
    return cfg


def _inputs(args: argparse.Namespace) -> dict:
    return {"fixed": args.fixed, "moving": args.moving, "fixed_mask": args.fixed_mask, "moving_mask": args.moving_mask}


def _one_grid_hint(cfg) -> str:
    return ("Resample the images to a coarser grid (contreg register-native --working-spacing MM, default the "
            f"preset's design spacing {cfg.field.design_spacing:g} mm) or raise --max-memory.")


def _check_memory_before(where: str, headers: dict, cfg, request: RunRequest, *, working_spacing=None,
                         working_grid_only: bool = False) -> None:
    """Pre-flight of the memory estimate from the inputs' headers, before any voxel is read.

    The registration grid is the fixed grid when fixed and moving lie on one grid (shape, voxel axes and origin
    within :data:`~monai_contreg.spatial.grid.GRID_ATOL_MM`: the headers' :class:`~monai_contreg.spatial.grid.Grid`
    values compared as :func:`~monai_contreg.api.register` compares the loaded images; ``register``, ``run``), else the working grid
    over the fixed field of view at ``working_spacing`` (default the preset's design spacing; always for
    ``register-native``). Where a header gives no origin the smaller of the two estimates is checked, so that
    nothing the run itself would accept is refused. Inputs without a header geometry (DICOM folders) are checked
    when loaded.

    Raises:
        UserInputError: naming ``--max-memory`` (and ``--working-spacing``) when the estimate exceeds the limit.
    """
    from .methods.memory import check_memory, estimate_memory
    from .spatial.grid import Grid

    fixed, moving = headers.get("fixed"), headers.get("moving")
    if fixed is None or moving is None or fixed.linear is None or moving.linear is None:
        return
    masks = sum(1 for k in ("fixed_mask", "moving_mask") if headers.get(k) is not None)
    f_shape = fixed.spatial_shape
    linear = np.eye(4)
    linear[:3, :3] = fixed.linear  # the working grid's shape depends on the spacing only, not the origin or frame
    spacing = cfg.field.design_spacing if working_spacing is None else working_spacing
    w_shape = Grid(f_shape, linear).working(spacing).shape
    working_hint = (f"Use a coarser working grid (--working-spacing MM; now {spacing} mm, the preset's design spacing "
                    f"is {cfg.field.design_spacing:g} mm) or raise --max-memory.")
    candidates = [(w_shape, working_hint)]
    if not working_grid_only and f_shape == moving.spatial_shape:
        f_grid, m_grid = fixed.grid, moving.grid
        if f_grid is None or m_grid is None:  # cannot tell: the smaller estimate of the two grids
            candidates.append((f_shape, _one_grid_hint(cfg)))
        elif f_grid.same_as(m_grid):  # the decision register() makes (Grid, GRID_ATOL_MM)
            candidates = [(f_shape, _one_grid_hint(cfg))]
    shape, hint = min(candidates, key=lambda c: estimate_memory(c[0], cfg, masks=masks).total)
    check_memory(where, shape, cfg, max_memory=request.max_memory, masks=masks, device=request.torch_device(), hint=hint)


def _cmd_register(args: argparse.Namespace, request: RunRequest) -> int:
    from .api import register
    from .io.fields import field_format

    cfg = _config(args, request)
    # pre-flight: every input readable with a sane geometry, the output writable with room, before any work
    check_output_file("register", "-o/--output", args.output)  # not a folder, writable (room: below)
    fmt = field_format(args.output)
    headers = check_pair("register", _inputs(args), same_grid=False)  # two grids: register() resamples
    check_output_file("register", "-o/--output", args.output, field_bytes(headers["fixed"].spatial_shape, fmt))
    _check_memory_before("register", headers, cfg, request)
    res = register(
        args.fixed, args.moving, fixed_mask=args.fixed_mask, moving_mask=args.moving_mask, config=cfg,
        device=request.device, series=args.series or None, max_memory=request.max_memory,
    )
    t0 = time.perf_counter()
    path = res.save(args.output)
    logger.info("stage write: %.2fs (%s)", time.perf_counter() - t0, path)
    stats = res.jacobian_statistics()
    print(
        f"wrote {path}  steps {res.steps}  time {res.timings['total']:.1f}s  "
        f"SDlogJ {stats['sdlogj']:.4f}  folding {stats['folding_percent']:.4f}%"
    )
    from .evaluation.quality_cli import print_quality

    print_quality(args, res, cfg)
    return 0


def _cmd_demo(args: argparse.Namespace, request: RunRequest) -> int:
    from .api import register
    from .data.demo import make_demo_pair
    from .evaluation.metrics import keypoint_tre
    from .methods.memory import check_memory

    cfg = _config(args, request)
    if args.out:
        check_output_dir("demo", "--out", args.out)
    # the demo pair's grid is known before it is built: refuse a run that cannot fit before building it
    check_memory("demo", DEMO_SHAPE, cfg, max_memory=request.max_memory, masks=2, device=request.torch_device(),
                 hint="The demo's grid is fixed; raise --max-memory.")
    t0 = time.perf_counter()
    pair = make_demo_pair(shape=DEMO_SHAPE, seed=args.seed)
    print(
        f"demo pair: synthetic chest phantom {pair.fixed.shape} at {pair.spacing[0]:g} mm, "
        f"{len(pair.fixed_keypoints)} keypoints (built in {time.perf_counter() - t0:.1f}s)"
    )
    res = register(
        pair.fixed, pair.moving, fixed_mask=pair.fixed_mask, moving_mask=pair.moving_mask, spacing=pair.spacing,
        config=cfg, device=request.device, max_memory=request.max_memory,
    )
    import torch

    fk = torch.as_tensor(pair.fixed_keypoints)
    mk = torch.as_tensor(pair.moving_keypoints)
    before = keypoint_tre(torch.zeros_like(res.ddf.as_tensor()).cpu(), fk, mk, pair.spacing)
    after = res.tre(fk, mk, pair.spacing)
    stats = res.jacobian_statistics()
    summary = {
        "preset": args.preset,
        "tre_before_mm": float(before.mean()),
        "tre_after_mm": float(after.mean()),
        "tre_after_p95_mm": float(np.percentile(after.numpy(), 95)),
        "sdlogj": stats["sdlogj"],
        "folding_percent": stats["folding_percent"],
        "steps": res.steps,
        "seconds": res.timings["total"],
    }
    print(f"TRE before: {summary['tre_before_mm']:.3f} mm")
    print(f"TRE after:  {summary['tre_after_mm']:.3f} mm  (95th percentile {summary['tre_after_p95_mm']:.3f} mm)")
    print(
        f"SDlogJ {stats['sdlogj']:.4f}, folding {stats['folding_percent']:.4f}%, "
        f"{res.steps} steps in {res.timings['total']:.1f}s ({args.preset})"
    )
    if args.out:
        out = Path(args.out)
        res.save(out / "disp_demo.nii.gz")
        (out / "demo_summary.json").write_text(json.dumps(summary, indent=2))
        print(f"wrote {out / 'disp_demo.nii.gz'} and {out / 'demo_summary.json'}")
    return 0


def _report_pair(outcome, i: int, n: int) -> None:
    """Log line of one pair of ``contreg run``; in a distributed run prefixed with the rank that ran it.

    Module-level so that it pickles into spawned processes."""
    from tqdm.auto import tqdm

    import ignite.distributed as idist

    rank = f"[rank {idist.get_rank()}] " if idist.get_world_size() > 1 else ""
    head = f"{rank}[{i + 1}/{n}] {outcome.key}"
    if outcome.status == "done":
        loss = "n/a" if outcome.final_loss is None else f"{outcome.final_loss:.5g}"
        line, stream = f"{head} done in {outcome.seconds:.1f}s, {outcome.steps} steps, final loss {loss} -> {outcome.path}", sys.stdout
        q = getattr(outcome, "quality", None)
        if q:
            from .evaluation.quality_cli import quality_text

            line += f"; quality: {quality_text(q)}"
    elif outcome.status == "skipped":
        line, stream = f"{head} skipped: {outcome.path} exists", sys.stdout
    else:
        line, stream = f"{head} FAILED after {outcome.seconds:.1f}s: {outcome.error}", sys.stderr
    with tqdm.external_write_mode(file=stream):  # above a progress bar, if any
        # one write per line: ranks share stdout and must not interleave within a line; flush for spawned ranks
        stream.write(line + "\n")
        stream.flush()


def _cmd_submit(args: argparse.Namespace, request: RunRequest) -> int:
    from .workflow import make_submission

    check_input_file("submit", "fields folder", args.fields)
    check_input_file("submit", "--dataset", args.dataset)
    if not str(args.output).endswith(".zip"):
        raise UserInputError(f"-o/--output: the submission must be a .zip file, got {args.output!r}.")
    size = sum(f.stat().st_size for f in Path(args.fields).glob("disp_*") if f.is_file()) if Path(args.fields).is_dir() else 0
    check_output_file("submit", "-o/--output", args.output, size)
    out = make_submission(args.fields, args.dataset, args.output, split=args.split, fmt=args.format)
    import zipfile

    with zipfile.ZipFile(out) as zf:
        n = len(zf.namelist())
    print(f"wrote {out} ({n} fields, {out.stat().st_size / 1e6:.1f} MB)")
    return 0


def _cmd_evaluate(args: argparse.Namespace, request: RunRequest) -> int:
    from .evaluation.learn2reg import evaluate_learn2reg, evaluation_table, write_evaluation_csv, write_evaluation_json

    from tqdm.auto import tqdm

    from .data.learn2reg import Learn2RegDataset

    check_input_file("evaluate", "dataset", args.dataset)
    check_input_file("evaluate", "fields", args.fields)
    if args.runtimes:
        check_input_file("evaluate", "--runtimes", args.runtimes)
    for option, path in (("--json", args.json), ("--csv", args.csv), ("--html", args.html)):
        if path:
            check_output_file("evaluate", option, path)
    if args.report:
        check_output_dir("evaluate", "--report", args.report)
    ds = Learn2RegDataset(args.dataset)
    with tqdm(total=len(ds.pairs(args.split)), desc="evaluate", unit="pair", leave=False) as bar:
        res = evaluate_learn2reg(
            ds, args.fields, args.split, runtimes=args.runtimes or "auto", masked=not args.no_mask,
            on_case=lambda key, case: bar.update(1), exclude_outside_keypoints=args.exclude_outside_keypoints,
        )
    header, rows = evaluation_table(res)
    shown = [h for h in header if h in _EVAL_COLUMNS or h == "case"]
    idx = [header.index(h) for h in shown]
    width = max(len(str(r[0])) for r in rows) + 2
    print(f"{res['name']} {res['split']}: {len(res['cases'])} pairs")
    print("".join(f"{h:<{width}}" if i == 0 else f"{h:>16}" for i, h in enumerate(shown)))
    for r in rows:
        print("".join(f"{r[j]:<{width}}" if k == 0 else f"{r[j]:>16.4f}" for k, j in enumerate(idx)))
    if args.json:
        print(f"wrote {write_evaluation_json(res, args.json)}")
    if args.csv:
        print(f"wrote {write_evaluation_csv(res, args.csv)}")
    if args.report:
        from .evaluation.report import make_report

        index = make_report(ds, args.fields, args.report, split=args.split, results=res)
        print(f"wrote {index}")
    if args.html:
        from .evaluation.html_report import evaluation_html_report

        page = evaluation_html_report(ds, args.fields, args.html, split=args.split, results=res)
        print(f"wrote {page} ({page.stat().st_size / 1e6:.2f} MB)")
    return 0


def _cmd_download(args: argparse.Namespace, request: RunRequest) -> int:
    from .data.download import fetch_dataset

    bar = None

    def progress(done, total):
        nonlocal bar
        if bar is None:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, unit="B", unit_scale=True, desc=args.dataset)
        bar.update(done - bar.n)

    try:
        out = fetch_dataset(args.dataset, args.dest, url=args.url, sha256=args.sha256, extract=not args.no_extract,
                            progress=progress)
    except OSError as exc:  # network failures (URLError is an OSError): the partial file is kept
        if isinstance(exc, FileNotFoundError):
            raise
        print(f"contreg download: error: {exc}; run the same command again to resume.", file=sys.stderr)
        return 1
    finally:
        if bar is not None:
            bar.close()
    print(f"{args.dataset}: {out}")
    return 0


_EVAL_COLUMNS = ("TRE_kp", "TRE_kp_initial", "LogJacDetStd", "SDlogJ", "folding_percent", "Dice", "HD95", "HD95_mm", "runtime")


def _cmd_mask(args: argparse.Namespace, request: RunRequest) -> int:
    from .data.lung_mask import describe_lungs, segment_lungs
    from .io.images import IMAGE_WRITE_FORMATS, load_image, save_image

    if not str(args.output).lower().endswith(IMAGE_WRITE_FORMATS):
        raise UserInputError(f"-o/--output: path {args.output!r} must end with one of {list(IMAGE_WRITE_FORMATS)}.")
    t0 = time.perf_counter()
    img = load_image(args.image, series=args.series or None)
    seg = segment_lungs(img)  # no plausible lung: LungMaskError, a user error (exit 2, one line)
    path = save_image(args.output, seg.mask.astype(np.uint8), img.affine)
    print(f"wrote {path}  lungs {describe_lungs(seg.report)}  grid {tuple(seg.mask.shape)}  "
          f"time {time.perf_counter() - t0:.1f}s")
    return 0


def _cmd_warp(args: argparse.Namespace, request: RunRequest) -> int:
    from .apply import apply_to_files

    # pre-flight: every input exists and is readable, every output can be written (before any warping)
    for option, path in (("--field", args.field), ("--transform", args.transform), ("--reference", args.reference),
                         ("--moving-reference", args.moving_reference)):
        if path:
            check_input_file("warp", option, path)
    for option, items in (("--image", args.image), ("--labels", args.labels), ("--points", args.points)):
        for src, dst in items or []:
            check_input_file("warp", f"{option} IN", src)
            check_output_file("warp", f"{option} OUT", dst)
    written = apply_to_files(
        field=args.field, transform=args.transform, reference=args.reference, images=args.image or [],
        labels=args.labels or [], points=args.points or [], points_space=args.points_space,
        moving_reference=args.moving_reference, lps=args.lps,
    )
    for path in written:
        print(f"wrote {path}")
    return 0


def _check_run_memory(where: str, pairs, cfg, request: RunRequest) -> None:
    """:func:`_check_memory_before` for every pair of a run (headers only), before any pair runs."""
    problems = []
    for pair in pairs:
        images = {"fixed": pair.fixed, "moving": pair.moving, "fixed_mask": pair.fixed_mask, "moving_mask": pair.moving_mask}
        headers = {k: read_header(where, k, v) for k, v in images.items() if v is not None}
        try:
            _check_memory_before(f"pair {pair.key}", headers, cfg, request)
        except UserInputError as exc:
            problems.append(str(exc))
    if problems:
        more = f" (and {len(problems) - 1} more pair(s))" if len(problems) > 1 else ""
        raise UserInputError(f"{where}: {problems[0]}{more}")


def _cmd_run(args: argparse.Namespace, request: RunRequest) -> int:
    from .distributed import check_launch, launched_by_torchrun, run_split_distributed
    from .preflight import check_run
    from .workflow import run_split

    distributed = args.backend is not None or args.nproc_per_node is not None or launched_by_torchrun()
    if distributed:  # option errors before anything starts
        args.backend = check_launch(args.backend, args.nproc_per_node, request.device, request.threads, cli=True)
    elif args.master_port is not None:
        raise UserInputError("--master-port: only used with --nproc-per-node (spawned processes).")
    cfg = _config(args, request)
    if distributed and not args.progress:  # ranks share the terminal: no per-step bars unless asked
        cfg.engine.progress = False
    evaluate = (args.eval_json or True) if args.evaluate else False
    fmt = args.format if args.format.startswith(".") else f".{args.format}"
    # pre-flight: the dataset, every pair's input headers, the output folder (writable, room for the fields), and
    # every pair's memory estimate against --max-memory (single and distributed runs alike)
    _, pairs = check_run("run", args.dataset, args.split, args.output, fmt, overwrite=args.overwrite)
    _check_run_memory("run", pairs, cfg, request)
    if args.eval_json:
        check_output_file("run", "--eval-json", args.eval_json)
    if distributed:
        summary = run_split_distributed(
            args.dataset, args.split, args.output, cfg, backend=args.backend, nproc_per_node=args.nproc_per_node,
            master_port=args.master_port, device=request.device, threads=request.threads, fmt=args.format,
            overwrite=args.overwrite, evaluate=evaluate, on_pair=_report_pair, max_memory=request.max_memory,
            quality=not args.no_quality,
        )
    else:
        summary = run_split(
            args.dataset, args.split, args.output, cfg, device=request.device, fmt=args.format, overwrite=args.overwrite,
            progress=not args.no_bar and request.progress, on_pair=_report_pair, evaluate=evaluate,
            max_memory=request.max_memory, quality=not args.no_quality,
        )
    code = 1 if summary.failed else 0
    if summary.rank != 0:  # torchrun's other ranks: their pairs' lines were printed; rank 0 sums up
        return code
    print(
        f"registered {len(summary.done)}, skipped {len(summary.skipped)}, failed {len(summary.failed)} of "
        f"{len(summary.outcomes)} pairs; run log {summary.runtimes_path}"
    )
    if summary.evaluation is not None:
        from .evaluation.learn2reg import evaluation_summary

        print(f"evaluation: {evaluation_summary(summary.evaluation)}; wrote {summary.evaluation_path}")
    if summary.failed:
        print(f"contreg run: error: failed pairs: {summary.failed} (see {summary.runtimes_path})", file=sys.stderr)
        if args.evaluate:
            print("contreg run: evaluation skipped: not every pair has a field", file=sys.stderr)
    from .evaluation.quality_cli import suspect_pairs

    suspects = suspect_pairs(summary.outcomes)
    if suspects:
        print("suspect pairs (landmark-free estimate): " + "; ".join(suspects), file=sys.stderr)
        if args.fail_on_suspect:
            code = 1
    return code


def _cmd_register_native(args: argparse.Namespace, request: RunRequest) -> int:
    from .io.fields import field_format
    from .io.itk_transforms import ITK_TRANSFORM_FORMATS
    from .native import register_native

    if args.output:
        field_format(args.output)  # fail before any work on a bad output name
    if args.itk and not str(args.itk).lower().endswith(ITK_TRANSFORM_FORMATS):
        raise UserInputError(f"--itk: path {args.itk!r} must end with one of {list(ITK_TRANSFORM_FORMATS)}.")
    if getattr(args, "itk_affine", None):
        from .io.itk_transforms import ITK_AFFINE_FORMATS

        if not str(args.itk_affine).lower().endswith(ITK_AFFINE_FORMATS):
            raise UserInputError(f"--itk-affine: path {args.itk_affine!r} must end with one of {list(ITK_AFFINE_FORMATS)}.")
    if not (args.output or args.itk):
        raise UserInputError("register-native: give -o/--output (Learn2Reg field) and/or --itk (ITK transform).")
    cfg = _config(args, request)
    # pre-flight: inputs readable with sane geometry (each mask on its image's grid), outputs writable with room,
    # the working grid's memory estimate within --max-memory
    headers = check_pair("register-native", _inputs(args), same_grid=False)
    size = field_bytes(headers["fixed"].spatial_shape) if headers["fixed"].linear is not None else 0
    if args.output:
        check_output_file("register-native", "-o/--output", args.output, size)
    if args.itk:
        check_output_file("register-native", "--itk", args.itk, 2 * size)  # ITK writes float64 vectors
        refusal = _itk_export_refusal(args)
        if refusal and not args.output:  # nothing would be written: say so before the registration
            raise UserInputError(f"--itk: {refusal}")
        if refusal:
            logger.warning("register-native: --itk %s will not be written (%s); registering for -o %s (exit 2 at the "
                           "end).", args.itk, refusal, args.output)
    _check_memory_before("register-native", headers, cfg, request, working_spacing=args.working_spacing,
                         working_grid_only=True)
    res = register_native(
        args.fixed, args.moving, fixed_mask=args.fixed_mask, moving_mask=args.moving_mask,
        working_spacing=args.working_spacing, config=cfg, device=request.device, series=args.series or None,
        max_memory=request.max_memory,
    )
    t0 = time.perf_counter()
    written = [str(res.save(args.output))] if args.output else []
    if args.itk:
        try:
            written.append(str(res.save_itk(args.itk)))
        except UserInputError as exc:
            if not written:
                raise
            print(f"wrote {', '.join(written)}  working grid {res.working_shape}  fixed grid {tuple(res.ddf.shape[2:])}")
            raise UserInputError(f"--itk {args.itk!r} not written (the Learn2Reg field {written[0]!r} was): {exc}") from exc
    if getattr(args, "itk_affine", None):
        if res.linear is None:
            raise UserInputError(f"--itk-affine {args.itk_affine!r} not written ({', '.join(written)} were): this "
                                 "registration ran no affine stage (the pair looked aligned); use --preset unaligned.")
        written.append(str(res.save_itk_affine(args.itk_affine)))
    logger.info("stage write: %.2fs (%s)", time.perf_counter() - t0, ", ".join(written))
    print(
        f"wrote {', '.join(written)}  working grid {res.working_shape}  fixed grid {tuple(res.ddf.shape[2:])}  "
        f"time {res.timings['total']:.1f}s"
    )
    from .evaluation.quality_cli import print_quality

    print_quality(args, res, cfg)
    return 0


def _cmd_quality(args: argparse.Namespace, request: RunRequest) -> int:
    from .evaluation.quality_cli import cmd_quality

    return cmd_quality(args, request)


def _itk_export_refusal(args: argparse.Namespace) -> str:
    """Why an ITK export of this pair would be refused (an input ITK cannot read), or ``""``; header reads only."""
    from .io.geometry_checks import itk_reading
    from .io.itk_transforms import itk_export_frames

    readings = {k: itk_reading(getattr(args, k)) for k in ("fixed", "moving") if not Path(getattr(args, k)).is_dir()}
    try:
        itk_export_frames(np.eye(4), moving_affine=np.eye(4), fixed_itk=readings.get("fixed"),
                          moving_itk=readings.get("moving"), where="register-native")
    except UserInputError as exc:
        return str(exc)
    return ""


def _pair_list(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def _cmd_tune(args: argparse.Namespace, request: RunRequest) -> int:
    from .tuning import tune

    # pre-flight: the best config (and its CSV/plots/study beside it) can be written, before any trial runs
    check_output_file("tune", "-o/--output", args.output)
    base = _config(args, request)
    memory = {}
    if request.max_memory is not None:
        # --max-memory: the base config on every pair of the split is refused before any trial (headers only);
        # tune() checks each trial's own estimate against it (a keyword of tune(), passed when given)
        from .data.learn2reg import Learn2RegDataset

        _check_run_memory("tune", Learn2RegDataset(args.dataset).pairs(args.split), base, request)
        memory["max_memory"] = request.max_memory
    res = tune(
        args.dataset, args.split, args.output, preset=args.preset, base=base, space=args.space,
        pairs=_pair_list(args.pairs), n_trials=args.trials, objective=args.objective, max_sdlogj=args.max_sdlogj,
        max_folding=args.max_folding, search_steps=args.search_steps, storage=args.storage, study_name=args.study,
        seed=args.seed, report_every=args.report_every, tie_tolerance=args.tie_tolerance,
        nproc_per_node=args.nproc_per_node, backend=args.backend, master_port=args.master_port, device=request.device,
        threads=request.threads, heartbeat=args.heartbeat, holdout=_pair_list(args.holdout),
        final_run=not args.no_final_run, **memory,
    )
    if res.rank != 0:  # torchrun's other ranks: rank 0 writes the outputs and sums up
        return 0
    return 0 if res.best is not None else 1  # 1: no feasible trial, no config written (the message says so)
