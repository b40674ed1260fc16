"""Command line: ``contreg register | demo``.

    contreg register FIXED MOVING -o disp.nii.gz [--fixed-mask M] [--moving-mask M] [--preset io]
                     [--config cfg.yaml] [--set optim.schedule.peak_lr=10 ...] [--device cuda]
                     [--no-auto-mask] [--series UID]
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
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from .errors import UserInputError, cli_error
from .preflight import check_input_file, check_output_dir, check_output_file, check_pair, field_bytes, parse_spacing

__all__ = ["main"]

logger = logging.getLogger("monai_contreg.cli")


def _config(args: argparse.Namespace):
    from .methods.config import RegistrationConfig
    from .methods.presets import get_preset

    cfg = get_preset(args.preset)
    if args.config:
        cfg = RegistrationConfig.from_file(args.config, base=cfg)
    if args.set:
        cfg = cfg.with_overrides(args.set)
    if getattr(args, "threads", None):
        cfg.engine.num_threads = args.threads
    if _show_progress(args):
        cfg.engine.progress = True
    if getattr(args, "no_auto_mask", False):
        cfg.preprocess.auto_mask = False
    return cfg


def _show_progress(args: argparse.Namespace) -> bool:
    """Progress bars: on a terminal by default (tqdm writes to stderr); ``--quiet`` or a pipe: none."""
    if getattr(args, "quiet", False):
        return False
    return bool(getattr(args, "progress", False)) or sys.stderr.isatty()


def _max_memory(args: argparse.Namespace):
    from .methods.memory import parse_memory

    value = getattr(args, "max_memory", None)
    return None if value is None else parse_memory("--max-memory", value)


def _common(p: argparse.ArgumentParser) -> None:
    from .methods.presets import preset_names

    p.add_argument("--preset", default="io", help=f"method preset, one of {preset_names()} (default: io)")
    p.add_argument("--config", help="YAML/JSON file with config overrides (applied on top of the preset)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one option, e.g. optim.schedule.peak_lr=10")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cpu)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-auto-mask", action="store_true",
                   help="do not segment the lungs of images given without a mask (presets that mask their inputs "
                        "do so by default; see 'contreg mask')")
    p.add_argument("--progress", action="store_true",
                   help="show a progress bar over optimisation steps even when stderr is not a terminal")
    p.add_argument("--quiet", action="store_true", help="no progress bar (default: one on a terminal)")
    p.add_argument("--max-memory", metavar="SIZE",
                   help="memory the registration may use, e.g. 8G or 500M (default: 80%% of the available RAM, or of "
                        "the GPU's free memory); checked against an estimate before the run starts")


def _inputs(args: argparse.Namespace) -> dict:
    return {"fixed": args.fixed, "moving": args.moving, "fixed_mask": args.fixed_mask, "moving_mask": args.moving_mask}


def _spacing_option(text: str):
    try:
        return parse_spacing(text, "--working-spacing")
    except UserInputError as exc:  # argparse prints it as "argument --working-spacing: ..." (exit 2)
        raise argparse.ArgumentTypeError(str(exc).split(": ", 1)[1]) from exc


def _cmd_register(args: argparse.Namespace) -> int:
    from .api import register
    from .io.fields import field_format

    cfg = _config(args)
    # pre-flight: every input readable with a sane geometry, the output writable with room, before any work
    check_output_file("register", "-o/--output", args.output)  # not a folder, writable (room: below)
    fmt = field_format(args.output)
    headers = check_pair("register", _inputs(args), same_grid=False)  # two grids: register() resamples
    check_output_file("register", "-o/--output", args.output, field_bytes(headers["fixed"].spatial_shape, fmt))
    res = register(
        args.fixed, args.moving, fixed_mask=args.fixed_mask, moving_mask=args.moving_mask, config=cfg, device=args.device,
        series=args.series or None, max_memory=_max_memory(args),
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


def _cmd_demo(args: argparse.Namespace) -> int:
    from .api import register
    from .data.demo import make_demo_pair
    from .evaluation.metrics import keypoint_tre

    cfg = _config(args)
    if args.out:
        check_output_dir("demo", "--out", args.out)
    t0 = time.perf_counter()
    pair = make_demo_pair(seed=args.seed)
    print(
        f"demo pair: synthetic chest phantom {pair.fixed.shape} at {pair.spacing[0]:g} mm, "
        f"{len(pair.fixed_keypoints)} keypoints (built in {time.perf_counter() - t0:.1f}s)"
    )
    res = register(
        pair.fixed, pair.moving, fixed_mask=pair.fixed_mask, moving_mask=pair.moving_mask, spacing=pair.spacing,
        config=cfg, device=args.device,
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


def _cmd_run(args: argparse.Namespace) -> int:
    from .distributed import check_launch, launched_by_torchrun, run_split_distributed
    from .workflow import run_split

    from .preflight import check_run
    from .workflow import FIELD_FORMATS

    distributed = args.backend is not None or args.nproc_per_node is not None or launched_by_torchrun()
    if distributed:  # option errors before anything starts
        args.backend = check_launch(args.backend, args.nproc_per_node, args.device, args.threads, cli=True)
    elif args.master_port is not None:
        raise UserInputError("--master-port: only used with --nproc-per-node (spawned processes).")
    cfg = _config(args)
    if distributed and not args.progress:  # ranks share the terminal: no per-step bars unless asked
        cfg.engine.progress = False
    evaluate = (args.eval_json or True) if args.evaluate else False
    if args.eval_json and not args.evaluate:
        raise UserInputError("--eval-json: give --evaluate too (it says where the evaluation is written).")
    fmt = args.format if args.format.startswith(".") else f".{args.format}"
    if fmt not in FIELD_FORMATS:
        raise UserInputError(f"--format: unknown field format {args.format!r}; expected one of {list(FIELD_FORMATS)}.")
    # pre-flight: the dataset, every pair's input headers, the output folder (writable, room for the fields)
    check_run("run", args.dataset, args.split, args.output, fmt, overwrite=args.overwrite)
    if args.eval_json:
        check_output_file("run", "--eval-json", args.eval_json)
    if distributed:
        summary = run_split_distributed(
            args.dataset, args.split, args.output, cfg, backend=args.backend, nproc_per_node=args.nproc_per_node,
            master_port=args.master_port, device=args.device, threads=args.threads or None, fmt=args.format,
            overwrite=args.overwrite, evaluate=evaluate, on_pair=_report_pair,
        )
    else:
        if args.threads:  # the whole run, as each rank of a distributed run does
            import torch

            torch.set_num_threads(args.threads)
        register_fn = None
        if args.max_memory is not None:
            import functools

            from .api import register

            register_fn = functools.partial(register, max_memory=_max_memory(args))
        summary = run_split(
            args.dataset, args.split, args.output, cfg, device=args.device, fmt=args.format, overwrite=args.overwrite,
            progress=not args.no_bar and _show_progress(args), on_pair=_report_pair, evaluate=evaluate,
            register_fn=register_fn, quality=not args.no_quality,
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


def _cmd_submit(args: argparse.Namespace) -> int:
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


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluation.learn2reg import evaluate_learn2reg, evaluation_table, write_evaluation_csv, write_evaluation_json

    from tqdm.auto import tqdm

    from .data.learn2reg import Learn2RegDataset

    check_input_file("evaluate", "dataset", args.dataset)
    check_input_file("evaluate", "fields", args.fields)
    if args.runtimes:
        check_input_file("evaluate", "--runtimes", args.runtimes)
    for option, path in (("--json", args.json), ("--csv", args.csv), ("--html", getattr(args, "html", None))):
        if path:
            check_output_file("evaluate", option, path)
    if args.report:
        check_output_dir("evaluate", "--report", args.report)
    ds = Learn2RegDataset(args.dataset)
    with tqdm(total=len(ds.pairs(args.split)), desc="evaluate", unit="pair", leave=False) as bar:
        res = evaluate_learn2reg(
            ds, args.fields, args.split, runtimes=args.runtimes or "auto", masked=not args.no_mask,
            on_case=lambda key, case: bar.update(1),
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


def _cmd_download(args: argparse.Namespace) -> int:
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
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("submit", help="zip the fields of a split in the official Learn2Reg layout")
    p.add_argument("fields", help="folder of fields written by 'contreg run'")
    p.add_argument("-o", "--output", required=True, help="submission zip")
    p.add_argument("--dataset", required=True, help="Learn2Reg dataset folder or json (for the pairs and expected shape)")
    p.add_argument("--split", default="val", help="split (default: val)")
    p.add_argument("--format", default="nii.gz", help="nii.gz or npz (float16)")
    p.set_defaults(func=_cmd_submit)

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
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("download", help="download (resumably, checksum-verified) and extract a Learn2Reg dataset")
    p.add_argument("dataset", help="dataset name: nlst")
    p.add_argument("dest", help="folder for the archive and the extracted files")
    p.add_argument("--url", help="override the archive's address (a mirror)")
    p.add_argument("--sha256", help="expected SHA-256 of the archive (hex)")
    p.add_argument("--no-extract", action="store_true", help="keep the archive packed")
    p.set_defaults(func=_cmd_download)


def _cmd_register_native(args: argparse.Namespace) -> int:
    from .io.fields import field_format
    from .io.itk_transforms import ITK_TRANSFORM_FORMATS
    from .native import register_native

    if args.output:
        field_format(args.output)  # fail before any work on a bad output name
    if args.itk and not str(args.itk).lower().endswith(ITK_TRANSFORM_FORMATS):
        raise UserInputError(f"--itk: path {args.itk!r} must end with one of {list(ITK_TRANSFORM_FORMATS)}.")
    if not (args.output or args.itk):
        raise UserInputError("register-native: give -o/--output (Learn2Reg field) and/or --itk (ITK transform).")
    # pre-flight: inputs readable with sane geometry (each mask on its image's grid), outputs writable with room
    headers = check_pair("register-native", _inputs(args), same_grid=False)
    size = field_bytes(headers["fixed"].spatial_shape) if headers["fixed"].linear is not None else 0
    if args.output:
        check_output_file("register-native", "-o/--output", args.output, size)
    if args.itk:
        check_output_file("register-native", "--itk", args.itk, 2 * size)  # ITK writes float64 vectors
    spacing = args.working_spacing
    cfg = _config(args)
    res = register_native(
        args.fixed, args.moving, fixed_mask=args.fixed_mask, moving_mask=args.moving_mask, working_spacing=spacing,
        config=cfg, device=args.device, series=args.series or None, max_memory=_max_memory(args),
    )
    t0 = time.perf_counter()
    written = [str(res.save(args.output))] if args.output else []
    if args.itk:
        written.append(str(res.save_itk(args.itk)))
    logger.info("stage write: %.2fs (%s)", time.perf_counter() - t0, ", ".join(written))
    print(
        f"wrote {', '.join(written)}  working grid {res.working_shape}  fixed grid {tuple(res.ddf.shape[2:])}  "
        f"time {res.timings['total']:.1f}s"
    )
    from .evaluation.quality_cli import print_quality

    print_quality(args, res, cfg)
    return 0


def _cmd_mask(args: argparse.Namespace) -> int:
    from .data.lung_mask import LungMaskError, lung_mask
    from .io.images import IMAGE_WRITE_FORMATS, load_image, save_image
    from .spatial.conventions import spacing_from_affine

    if not str(args.output).lower().endswith(IMAGE_WRITE_FORMATS):
        raise UserInputError(f"-o/--output: path {args.output!r} must end with one of {list(IMAGE_WRITE_FORMATS)}.")
    t0 = time.perf_counter()
    img = load_image(args.image, series=args.series or None)
    try:
        mask = lung_mask(img)
    except LungMaskError as exc:
        print(f"contreg mask: error: {exc}", file=sys.stderr)
        return 1
    path = save_image(args.output, mask.astype(np.uint8), img.affine)
    ml = float(mask.sum()) * float(np.prod(spacing_from_affine(img.affine))) / 1000.0
    print(f"wrote {path}  lungs {ml:.0f} mL  grid {tuple(mask.shape)}  time {time.perf_counter() - t0:.1f}s")
    return 0


def _cmd_warp(args: argparse.Namespace) -> int:
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
    p.add_argument("--fixed-mask", help="fixed image mask file")
    p.add_argument("--moving-mask", help="moving image mask file")
    p.add_argument("--working-spacing", type=_spacing_option, help="working grid spacing in mm, one value or three comma-separated (default: the preset's design spacing, field.design_spacing)")
    _series_option(p)
    _common(p)
    from .evaluation.quality_cli import add_quality_option

    add_quality_option(p)
    p.set_defaults(func=_cmd_register_native)

    p = sub.add_parser("mask", help="segment the lungs of a CT (the automatic mask of the masking presets)")
    p.add_argument("image", help="CT in HU: image file or DICOM series folder")
    p.add_argument("-o", "--output", required=True, help="mask image (.nii.gz, .nii, .nrrd, .mha; uint8, 1 = lung)")
    _series_option(p)
    p.set_defaults(func=_cmd_mask)

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
    p.set_defaults(func=_cmd_warp)


def _pair_list(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def _cmd_tune(args: argparse.Namespace) -> int:
    from .tuning import tune

    # pre-flight: the best config (and its CSV/plots/study beside it) can be written, before any trial runs
    check_output_file("tune", "-o/--output", args.output)
    res = tune(
        args.dataset, args.split, args.output, preset=args.preset, base=_config(args), space=args.space,
        pairs=_pair_list(args.pairs), n_trials=args.trials, objective=args.objective, max_sdlogj=args.max_sdlogj,
        max_folding=args.max_folding, search_steps=args.search_steps, storage=args.storage, study_name=args.study,
        seed=args.seed, report_every=args.report_every, tie_tolerance=args.tie_tolerance,
        nproc_per_node=args.nproc_per_node, backend=args.backend, master_port=args.master_port, device=args.device,
        threads=args.threads or None, heartbeat=args.heartbeat, holdout=_pair_list(args.holdout),
        final_run=not args.no_final_run,
    )
    if res.rank != 0:  # torchrun's other ranks: rank 0 writes the outputs and sums up
        return 0
    return 0 if res.best is not None else 1  # 1: no feasible trial, no config written (the message says so)


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
    p.set_defaults(func=_cmd_tune)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="contreg", description="Continuous instance-optimisation image registration")
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
    from .evaluation.quality_cli import add_quality_option, add_quality_parser

    add_quality_option(p)
    p.set_defaults(func=_cmd_register)

    p = sub.add_parser("demo", help="register the built-in synthetic pair and print TRE before/after")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic pair")
    p.add_argument("--out", help="folder to write the field and a JSON summary to")
    _common(p)
    p.set_defaults(func=_cmd_demo)
    _add_learn2reg_parsers(sub)
    _add_geometry_parsers(sub)
    _add_tune_parser(sub)
    add_quality_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING if args.verbose == 0 else logging.INFO if args.verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    if args.verbose == 0:
        logging.getLogger("ignite").setLevel(logging.WARNING)
        # ignite logs an exception that ends a run before re-raising it; the CLI prints it once, below
        logging.getLogger("ignite.engine.engine.Engine").setLevel(logging.CRITICAL)
    try:
        return int(args.func(args) or 0)
    except BaseException as exc:  # the one handler of every command: user errors are one line (errors.cli_error)
        code = cli_error(args.command, exc, args.verbose)
        if code is None:  # a programming error: keep its traceback
            raise
        return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
