"""Named method presets: a name -> a complete :class:`RegistrationConfig` (its list of stages and shared settings).

* ``io`` (default): the paper's method (authors' schedule: peak lr 15, constant to step 70, cosine to 180, linear
  to 270) on windowed, lung-masked images, with the diffusion weight raised from 1.25 to 1.75 (see README,
  "Defaults": SDlogJ <= 0.1 on every nlst_synth pair).
* ``io-authors``: the authors' published settings (peak lr 15, their schedule, 2 smoothing passes,
  min-max normalisation of lung-masked images).
* ``io-lr1``: constant learning rate 1 for 100 steps (ablation).
* ``io-lr15``: constant learning rate 15 for 270 steps (ablation).
* ``convex``: ConvexAdam's coupled convex discrete stage alone (grid spacing 6, search 4, inverse consistent).
* ``convexadam``: ConvexAdam's reference settings: the discrete stage, then Adam at lr 1 for 80 steps
  (lambda 1.25, 3 smoothing passes, half resolution) on unmasked images in raw intensities, as the reference sees them.
* ``convex+io``: the paper's schedule (``io``) started from the discrete stage's field.
* ``refine``: constant learning rate 1 for 80 steps, for refining a given initial field.
* ``unaligned``: an affine stage (:class:`~monai_contreg.methods.stages.AffineStage`: rigid then affine, MIND-SSC
  in world mm) before the ``io`` dense stage, for pairs that are not pre-aligned. Any preset gets the same affine
  stage on its own when a pair looks unaligned (``auto_affine``, :func:`monai_contreg.registration.auto_affine`).
* ``accurate``: beyond the paper: multi-resolution instance optimisation (:mod:`monai_contreg.methods.multilevel`)
  ending on a full-resolution field; settings chosen on nlst_synth pairs 0101 and 0102 only (README, "accurate").

Every preset was set on 1.5 mm images and says so in ``field.design_spacing`` (mm); its other constants are in
voxels (see :class:`~monai_contreg.methods.config.FieldConfig`), and
:func:`~monai_contreg.native.register_native` registers at that spacing unless told otherwise. Every preset keeps
the field inside the image (``optim.keep_in_image``) and runs the divergence guard (``engine.divergence_*``).
"""

from __future__ import annotations

from collections.abc import Callable

from .._validation import choose
from ..errors import InputTypeError
from ..optim.schedule import PiecewiseSchedule
from .config import AffineStage, ConvexStage, DenseStage, PreprocessConfig, RegistrationConfig

__all__ = ["PRESETS", "get_preset", "preset_names", "resolve_config"]


def _constant_schedule(lr: float, steps: int) -> PiecewiseSchedule:
    return PiecewiseSchedule(peak_lr=lr, constant_steps=steps, cosine_end=steps, final_lr=lr, linear_start_lr=lr, total_steps=steps)


def _io() -> RegistrationConfig:
    """One dense stage: half resolution, the authors' schedule (270 steps), lambda 1.75."""
    return RegistrationConfig(stages=(DenseStage(),))


def _io_authors() -> RegistrationConfig:
    return RegistrationConfig(
        stages=(DenseStage(grid_factor=2, smoothing_passes=2, schedule=PiecewiseSchedule(), reg_weight=1.25),),
        preprocess=PreprocessConfig(intensity="minmax", use_masks=True),
    )


def _constant(lr: float, steps: int) -> Callable[[], RegistrationConfig]:
    def make() -> RegistrationConfig:
        return RegistrationConfig(stages=(DenseStage(schedule=_constant_schedule(lr, steps)),))

    return make


def _reference_inputs() -> PreprocessConfig:
    """ConvexAdam's reference computes MIND on the raw (unclipped, unmasked) intensities."""
    return PreprocessConfig(intensity="none", use_masks=False)


def _convex() -> RegistrationConfig:
    """One convex stage (grid spacing 6, search 4, inverse consistent)."""
    return RegistrationConfig(stages=(ConvexStage(ic=True),), preprocess=_reference_inputs())


def _convexadam() -> RegistrationConfig:
    """A convex stage, then one dense stage at lr 1 for 80 steps (lambda 1.25, half resolution)."""
    return RegistrationConfig(
        stages=(
            ConvexStage(ic=True),
            DenseStage(grid_factor=2, smoothing_passes=3, smoothing_kernel=3, schedule=_constant_schedule(1.0, 80), reg_weight=1.25),
        ),
        preprocess=_reference_inputs(),
    )


def _convex_io() -> RegistrationConfig:
    """A convex stage, then the ``io`` dense stage."""
    return RegistrationConfig(stages=(ConvexStage(), DenseStage()))


def _unaligned() -> RegistrationConfig:
    """The affine stage, then the ``io`` dense stage."""
    return RegistrationConfig(stages=(AffineStage(), DenseStage()))


def _accurate() -> RegistrationConfig:
    """Two dense stages: 100 half-resolution steps at lr 1 (``io-lr1``), then 40 full-resolution steps at lr 1 -> 0.25
    (box width 5).

    Chosen on nlst_synth pairs 0101 and 0102 only (README, "Beyond the paper"): the paper's 270-step schedule on the
    half-resolution level and 60 full-resolution steps gave the same TRE to 0.002 mm there at about 1.6x the time;
    20 or 30 full-resolution steps lost 0.005-0.008 mm on 0101; width-5 smoothing gave the lowest SDlogJ on 0101.
    """
    coarse = DenseStage(grid_factor=2, schedule=_constant_schedule(1.0, 100), reg_weight=1.75)
    fine = DenseStage(
        grid_factor=1,
        # linear from peak_lr (step 0) to final_lr: linear_start_lr=None continues from the peak, so peak_lr sets
        # the whole level's rate (a separate linear_start_lr would leave step 0 at peak_lr)
        schedule=PiecewiseSchedule(peak_lr=1.0, constant_steps=0, cosine_end=0, linear_start_lr=None, final_lr=0.25, total_steps=40),
        reg_weight=1.75,
        smoothing_kernel=5,
    )
    return RegistrationConfig(stages=(coarse, fine))


PRESETS: dict[str, Callable[[], RegistrationConfig]] = {
    "io": _io,
    "io-authors": _io_authors,
    "io-lr1": _constant(1.0, 100),
    "io-lr15": _constant(15.0, 270),
    "convex": _convex,
    "convexadam": _convexadam,
    "convex+io": _convex_io,
    # refinement of a given initial field (a network's prediction): short, low constant learning rate
    "refine": _constant(1.0, 80),
    # beyond the paper: multi-resolution, full-resolution final level (chosen on pairs 0101/0102 only)
    "accurate": _accurate,
    # pairs that are not pre-aligned: a rigid-then-affine stage first
    "unaligned": _unaligned,
}


def preset_names() -> list[str]:
    """Names accepted by :func:`get_preset`."""
    return list(PRESETS)


def get_preset(name: str) -> RegistrationConfig:
    """A fresh config for preset ``name`` (unknown names raise ``ValueError`` with the nearest valid one)."""
    key = choose("get_preset", "preset", name, list(PRESETS))
    return PRESETS[key]()


def resolve_config(where: str, config: RegistrationConfig | str | None) -> RegistrationConfig:
    """A validated config from a :class:`RegistrationConfig`, a preset name, or ``None`` (the ``io`` preset).

    Raises:
        InputTypeError: naming ``where`` for any other type.
        UserInputError: an unknown preset or invalid values.
    """
    cfg = get_preset(config) if isinstance(config, str) else (config or get_preset("io"))
    if not isinstance(cfg, RegistrationConfig):
        raise InputTypeError(f"{where}: config must be a RegistrationConfig, a preset name or None, got {type(cfg).__name__}.")
    cfg.validate()
    return cfg
