"""Instance optimisation as a pytorch-ignite :class:`~ignite.engine.Engine`.

One engine run registers one image pair; one iteration is one Adam step on the displacement field::

    engine = create_registration_engine(field, fixed_features, moving_features, optimizer, reg_weight=1.25)
    PiecewiseLRScheduler(optimizer, schedule).attach(engine)
    engine.run(data=None, max_epochs=1, epoch_length=schedule.total_steps)

``engine.state.output`` after each iteration is ``{"loss", "similarity", "regularization"}``: floats, or, on a
sync-free engine (``sync_free``, the default on CUDA), 0-dim tensors on the field's device, so that no step waits for
the device; handlers read them on a cadence inside :func:`host_read`.

On CPU with the compiled kernels, the default similarity and regulariser and a :class:`~monai_contreg.optim.FieldAdam`
optimiser, a step is the fused step: :func:`monai_contreg.kernels.ops.field_step_grad` (smoothing, warp + SSD and
diffusion gradient, adjoint smoothing) into buffers allocated once per run, then the Adam update with the in-image
bound in one pass; no autograd graph and no full-size temporary per step. ``engine.state.last_ddf`` is then the
smoothed field the last step's loss saw (``None`` on the other paths).
Custom events (:class:`RegistrationEvents`) let a user hook into the step: ``LOSS_COMPUTED`` fires after the
forward pass (``engine.state.step_tensors`` holds the tensors, the extra loss terms added to
``engine.state.extra_loss`` are back-propagated), ``FIELD_UPDATED`` after the optimiser step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from ignite.engine import Engine, EventEnum

from ..errors import UserInputError
from ..kernels.ops import FieldStepBuffers, field_step_grad
from ..modes import PaddingMode
from .._validation import check_tensor, choose
from ..losses.regularization import diffusion
from ..losses.similarity import WarpedSSD
from ..spatial.conventions import ddf_to_sampling_grid
from ..spatial.warp import grid_sample_3d
from .adam import FieldAdam
from .field import DisplacementField

__all__ = ["RegistrationEvents", "create_registration_engine", "host_read", "host_reads"]

_HOST_READS = [0]


def host_reads() -> int:
    """How many times :func:`host_read` was entered in this process (a test's count of host reads per run)."""
    return _HOST_READS[0]


@contextlib.contextmanager
def host_read() -> Iterator[None]:
    """A deliberate read of device values by the host (a history flush, a guard on its cadence).

    Under ``torch.cuda.set_sync_debug_mode("error")`` (a test that the step path has no host sync) the reads
    inside this block are allowed; the mode is restored after it. Counted by :func:`host_reads`.
    """
    _HOST_READS[0] += 1
    mode = torch.cuda.get_sync_debug_mode() if torch.cuda.is_available() else 0
    if mode:
        torch.cuda.set_sync_debug_mode(0)
    try:
        yield
    finally:
        if mode:
            torch.cuda.set_sync_debug_mode(mode)


class RegistrationEvents(EventEnum):
    """Events fired inside a registration step, in addition to ignite's standard events."""

    LOSS_COMPUTED = "loss_computed"
    FIELD_UPDATED = "field_updated"


def _has_handlers(engine: Engine, event: RegistrationEvents) -> bool:
    # ignite has no public "any handler for this event?" query; its handler table is a dict of lists (without
    # the table, e.g. after an ignite change, assume there may be handlers)
    table = getattr(engine, "_event_handlers", None)
    return True if table is None else bool(table.get(event))


def create_registration_engine(
    field: DisplacementField,
    fixed_features: torch.Tensor,
    moving_features: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    *,
    reg_weight: float = 1.25,
    padding_mode: str = "border",
    similarity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    regularizer: Callable[[torch.Tensor], torch.Tensor] | None = None,
    fused: bool | None = None,
    feature_storage: str = "float32",
    sync_free: bool | None = None,
) -> Engine:
    """Build the engine whose iterations are Adam steps of ``field`` on one feature pair.

    Args:
        field: the optimised :class:`DisplacementField`; its working grid must equal the features' grid.
        fixed_features: ``(1, C, h, w, d)`` features of the fixed image on the working grid.
        moving_features: ``(1, C, h, w, d)`` features of the moving image on the working grid.
        optimizer: optimiser over ``field.parameters()`` (Adam in the paper).
        reg_weight: weight ``lambda`` of the regulariser.
        padding_mode: ``grid_sample`` padding for the warped moving features (``"border"`` or ``"zeros"``).
        similarity: ``(warped, fixed) -> scalar``; default: SSD (:class:`monai_contreg.losses.WarpedSSD`).
        regularizer: ``ddf -> scalar``; default :func:`monai_contreg.losses.diffusion`.
        fused: for the default similarity: ``None`` = the compiled one-pass warp + SSD + gradient on CPU where
            available, ``False`` = ``grid_sample`` + autograd (needed when a ``LOSS_COMPUTED`` handler puts a loss
            on ``step_tensors["warped"]``, which the fused path returns without a gradient), ``True`` = require it.
        feature_storage: ``"float32"`` or ``"bfloat16"`` storage of the features the default similarity samples.
        sync_free: the step's output as 0-dim device tensors instead of floats (no host sync per step); ``None``:
            on CUDA. The project's handlers read such outputs on their cadence.

    Returns:
        An ignite ``Engine`` with :class:`RegistrationEvents` registered and ``state.field``, ``state.optimizer``,
        ``state.step_path`` (``"fused"`` when the fused step can run, else ``"autograd"``) and ``state.last_ddf``.
    """
    where = "create_registration_engine"
    check_tensor(where, "fixed_features", fixed_features, 5)
    check_tensor(where, "moving_features", moving_features, 5)
    if fixed_features.shape != moving_features.shape:
        raise UserInputError(
            f"{where}: fixed_features {tuple(fixed_features.shape)} and moving_features "
            f"{tuple(moving_features.shape)} must have equal shapes."
        )
    if tuple(fixed_features.shape[2:]) != tuple(field.shape):
        raise UserInputError(
            f"{where}: the features' grid {tuple(fixed_features.shape[2:])} must equal the field's working grid "
            f"{tuple(field.shape)}."
        )
    padding_mode = choose(where, "padding_mode", padding_mode, PaddingMode).value
    reg_fn = regularizer if regularizer is not None else diffusion
    fixed_features = fixed_features.detach()
    moving_features = moving_features.detach()
    # the default similarity prepares its feature layout once per pair, not once per step
    warped_ssd = (
        WarpedSSD(moving_features, fixed_features, padding_mode, fused, feature_storage) if similarity is None else None
    )

    if sync_free is None:
        sync_free = field.displacement.is_cuda
    fused_step = (
        warped_ssd is not None and warped_ssd.path(field.displacement) == "compiled" and regularizer is None
        and isinstance(optimizer, FieldAdam)
        and any(p is field.displacement for g in optimizer.param_groups for p in g["params"])
    )
    buffers = FieldStepBuffers(field.displacement) if fused_step else None
    zeros = padding_mode == "zeros"

    def outputs(loss, sim, reg) -> dict:
        if sync_free:
            return {"loss": loss.detach(), "similarity": sim.detach(), "regularization": reg.detach()}
        return {"loss": float(loss.detach()), "similarity": float(sim.detach()), "regularization": float(reg.detach())}

    def fused_iteration(engine: Engine) -> dict:
        # the fused step: no autograd graph, every full-size tensor written into the run's buffers
        param = field.displacement
        engine.state.kernels.add("compiled")
        field_step_grad(param, buffers, warped_ssd._mcl, warped_ssd._fcl, zeros, field.kernel_size,
                        field.smoothing_passes, reg_weight)
        param.grad = buffers.grad
        engine.state.last_ddf = buffers.ddf
        # (without a regulariser weight the autograd step reports a zero regulariser: so does this one)
        if sync_free:
            sim, reg = buffers.losses[0].clone(), buffers.losses[1].clone() * (1.0 if reg_weight else 0.0)
            out = {"loss": sim + reg_weight * reg, "similarity": sim, "regularization": reg}
        else:
            sim_v, reg_v = buffers.losses.tolist()
            reg_v = reg_v if reg_weight else 0.0
            out = {"loss": sim_v + reg_weight * reg_v, "similarity": sim_v, "regularization": reg_v}
        engine.state.step_tensors = {"ddf": buffers.ddf, "warped": None, "similarity": buffers.losses[0],
                                     "regularization": buffers.losses[1]}
        engine.state.extra_loss = None
        optimizer.step()
        engine.state.step_tensors = None
        engine.fire_event(RegistrationEvents.FIELD_UPDATED)
        return out

    def step(engine: Engine, _batch: object) -> dict:
        optimizer.zero_grad(set_to_none=True)
        # a LOSS_COMPUTED handler may look at (and add a loss on) the step's tensors: the autograd step then
        handlers = _has_handlers(engine, RegistrationEvents.LOSS_COMPUTED)
        if fused_step and not handlers:
            return fused_iteration(engine)
        engine.state.last_ddf = None
        ddf = field()
        if warped_ssd is not None:
            # the warped features are only materialised when a LOSS_COMPUTED handler may look at them; such a
            # handler may add a loss on them, which needs their gradient: the autograd (grid_sample) path then
            engine.state.kernels.add(warped_ssd.path(ddf, autograd=handlers))
            sim, warped = warped_ssd(ddf, return_warped=handlers, autograd=handlers)
        else:
            engine.state.kernels.add("pytorch")
            warped = grid_sample_3d(moving_features, ddf_to_sampling_grid(ddf), "bilinear", padding_mode)
            sim = similarity(warped, fixed_features)
        reg = reg_fn(ddf) if reg_weight else ddf.new_zeros(())
        loss = sim + reg_weight * reg
        engine.state.step_tensors = {"ddf": ddf, "warped": warped, "similarity": sim, "regularization": reg}
        engine.state.extra_loss = None
        engine.fire_event(RegistrationEvents.LOSS_COMPUTED)
        if engine.state.extra_loss is not None:
            loss = loss + engine.state.extra_loss
        loss.backward()
        optimizer.step()
        engine.state.step_tensors = None
        engine.fire_event(RegistrationEvents.FIELD_UPDATED)
        return outputs(loss, sim, reg)

    engine = Engine(step)
    engine.register_events(*RegistrationEvents)
    engine.state.field = field
    engine.state.optimizer = optimizer
    engine.state.step_tensors = None
    engine.state.extra_loss = None
    engine.state.kernels = set()  # implementations of the similarity that ran: "compiled", "pytorch"
    engine.state.step_path = "fused" if fused_step else "autograd"
    engine.state.last_ddf = None
    engine.state.sync_free = bool(sync_free)
    return engine
