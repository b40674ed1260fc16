"""Instance optimisation as a pytorch-ignite :class:`~ignite.engine.Engine`.

One engine run registers one image pair; one iteration is one Adam step on the displacement field::

    engine = create_registration_engine(field, fixed_features, moving_features, optimizer, reg_weight=1.25)
    PiecewiseLRScheduler(optimizer, schedule).attach(engine)
    engine.run(data=None, max_epochs=1, epoch_length=schedule.total_steps)

``engine.state.output`` after each iteration is ``{"loss", "similarity", "regularization"}`` (floats).
Custom events (:class:`RegistrationEvents`) let a user hook into the step: ``LOSS_COMPUTED`` fires after the
forward pass (``engine.state.step_tensors`` holds the tensors, the extra loss terms added to
``engine.state.extra_loss`` are back-propagated), ``FIELD_UPDATED`` after the optimiser step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from ignite.engine import Engine, EventEnum

from ..errors import UserInputError
from ..modes import PaddingMode
from .._validation import check_tensor, choose
from ..losses.regularization import diffusion
from ..losses.similarity import WarpedSSD
from ..spatial.conventions import ddf_to_sampling_grid
from ..spatial.warp import grid_sample_3d
from .field import DisplacementField

__all__ = ["RegistrationEvents", "create_registration_engine"]


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

    Returns:
        An ignite ``Engine`` with :class:`RegistrationEvents` registered and ``state.field``, ``state.optimizer``.
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

    def step(engine: Engine, _batch: object) -> dict[str, float]:
        optimizer.zero_grad(set_to_none=True)
        ddf = field()
        if warped_ssd is not None:
            # the warped features are only materialised when a LOSS_COMPUTED handler may look at them; such a
            # handler may add a loss on them, which needs their gradient: the autograd (grid_sample) path then
            handlers = _has_handlers(engine, RegistrationEvents.LOSS_COMPUTED)
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
        return {"loss": float(loss.detach()), "similarity": float(sim.detach()), "regularization": float(reg.detach())}

    engine = Engine(step)
    engine.register_events(*RegistrationEvents)
    engine.state.field = field
    engine.state.optimizer = optimizer
    engine.state.step_tensors = None
    engine.state.extra_loss = None
    engine.state.kernels = set()  # implementations of the similarity that ran: "compiled", "pytorch"
    return engine
