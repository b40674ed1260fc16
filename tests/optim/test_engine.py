import pytest
import torch
from ignite.engine import Events

from monai_contreg.methods.config import RegistrationConfig
from monai_contreg.methods.io import compute_features, instance_optimisation
from monai_contreg.optim import (
    DisplacementField,
    PlateauEarlyStopping,
    RegistrationDivergedError,
    RegistrationEvents,
    create_registration_engine,
)

from tests.conftest import smooth_volume


def _shift_config(steps=120, lr=0.5):
    cfg = RegistrationConfig()
    cfg.field.grid_factor = 1
    cfg.field.smoothing_passes = 1
    cfg.optim.reg_weight = 0.1
    # the pairs here are torch.roll shifts: at the wrap-around seam the true correspondence is a whole image away,
    # which the divergence guard rightly finds implausible for real images
    cfg.engine.divergence_check = False
    s = cfg.optim.schedule
    s.peak_lr, s.constant_steps, s.cosine_end, s.total_steps, s.final_lr, s.linear_start_lr = lr, steps, steps, steps, lr, lr
    cfg.engine.divergence_check = False  # engine plumbing on tiny images, not converged runs
    return cfg


def test_field_module_zero_and_init():
    f = DisplacementField((4, 5, 6))
    assert torch.equal(f(), torch.zeros(1, 3, 4, 5, 6))
    init = torch.full((1, 3, 8, 10, 12), 2.0)
    g = DisplacementField((4, 5, 6), init=init, smoothing_passes=0)
    assert torch.allclose(g(), torch.full((1, 3, 4, 5, 6), 1.0))  # 2 fine voxels = 1 coarse voxel
    assert torch.allclose(g.ddf((8, 10, 12)), init)
    with pytest.raises(ValueError, match="DisplacementField: init must be a MONAI DDF"):
        DisplacementField((4, 5, 6), init=torch.zeros(1, 2, 4, 5, 6))


def test_identical_images_are_a_stationary_point():
    img = smooth_volume()
    cfg = _shift_config(steps=1)
    ff, mf = compute_features(img, img, cfg)
    grads = []

    class Grab:
        def attach(self, engine):
            engine.add_event_handler(
                RegistrationEvents.FIELD_UPDATED, lambda e: grads.append(e.state.field.displacement.grad.abs().max().item())
            )

    out = instance_optimisation(ff, mf, cfg, handlers=[Grab()])
    assert out.history["similarity"][0] == pytest.approx(0.0, abs=1e-10)
    assert grads[0] < 1e-6  # (Adam rescales any gradient to a full step, so the field itself is not tested)


@pytest.mark.parametrize("axis,shift", [(0, 2), (2, -1)])
def test_integer_shift_recovered(axis, shift):
    img = smooth_volume((28, 24, 26), sigma=1.5)
    moving = torch.roll(img, shifts=shift, dims=axis + 2)  # moving(y) = fixed(y - shift) -> u = +shift
    cfg = _shift_config()
    ff, mf = compute_features(img, moving, cfg)
    out = instance_optimisation(ff, mf, cfg)
    u = out.field()[0, :, 6:-6, 6:-6, 6:-6]
    assert u[axis].mean().item() == pytest.approx(shift, abs=0.1)
    others = [c for c in range(3) if c != axis]
    assert u[others].abs().mean().item() < 0.1
    assert out.history["loss"][-1] < out.history["loss"][0]


def test_custom_events_and_history():
    img = smooth_volume()
    cfg = _shift_config(steps=5)
    ff, mf = compute_features(img, torch.roll(img, 1, 2), cfg)
    fired = {"loss": 0, "field": 0}

    class Hook:
        def attach(self, engine):
            engine.add_event_handler(RegistrationEvents.LOSS_COMPUTED, lambda e: fired.__setitem__("loss", fired["loss"] + 1))
            engine.add_event_handler(RegistrationEvents.FIELD_UPDATED, lambda e: fired.__setitem__("field", fired["field"] + 1))

    out = instance_optimisation(ff, mf, cfg, handlers=[Hook()])
    assert fired == {"loss": 5, "field": 5}
    assert len(out.history["lr"]) == 5 and out.steps == 5


def test_nan_loss_stops_with_clear_error():
    img = smooth_volume()
    cfg = _shift_config(steps=5)
    ff, mf = compute_features(img, img, cfg)

    class Poison:
        def attach(self, engine):
            def poison(e):
                if e.state.iteration == 3:
                    e.state.extra_loss = torch.tensor(float("nan"))

            engine.add_event_handler(RegistrationEvents.LOSS_COMPUTED, poison)

    with pytest.raises(RegistrationDivergedError, match="diverged at step 3.*peak_lr"):
        instance_optimisation(ff, mf, cfg, handlers=[Poison()])


def test_plateau_early_stop():
    img = smooth_volume()
    cfg = _shift_config(steps=200)
    cfg.engine.early_stop_patience = 5
    cfg.engine.early_stop_warmup = 0
    cfg.engine.early_stop_min_delta = 0.5  # demand large improvements -> stops quickly
    ff, mf = compute_features(img, torch.roll(img, 1, 2), cfg)
    out = instance_optimisation(ff, mf, cfg)
    assert out.stopped_early and out.steps < 200


def test_tre_monitor_records_and_never_changes_result():
    img = smooth_volume((24, 24, 24), sigma=1.5)
    moving = torch.roll(img, 1, 2)
    cfg = _shift_config(steps=30)
    ff, mf = compute_features(img, moving, cfg)
    pts = torch.tensor([[12.0, 12.0, 12.0], [10.0, 11.0, 13.0]], dtype=torch.float64)
    a = instance_optimisation(ff, mf, cfg)
    cfg.engine.tre_every = 10
    b = instance_optimisation(ff, mf, cfg, keypoints=(pts, pts + torch.tensor([1.0, 0, 0], dtype=torch.float64)), image_shape=(24, 24, 24))
    assert [s for s, _ in b.tre_history] == [10, 20, 30]
    assert b.tre_history[-1][1] < b.tre_history[0][1] and b.tre_history[-1][1] < 0.3
    assert torch.equal(a.field(), b.field())


def test_engine_rejects_mismatched_grid():
    f = DisplacementField((4, 4, 4))
    opt = torch.optim.Adam(f.parameters())
    with pytest.raises(ValueError, match="create_registration_engine: the features' grid"):
        create_registration_engine(f, torch.zeros(1, 12, 5, 4, 4), torch.zeros(1, 12, 5, 4, 4), opt)


def test_checkpoints_written_and_loadable(tmp_path):
    img = smooth_volume()
    cfg = _shift_config(steps=10)
    cfg.engine.checkpoint_dir = str(tmp_path / "ckpt")
    cfg.engine.checkpoint_every = 5
    ff, mf = compute_features(img, torch.roll(img, 1, 2), cfg)
    out = instance_optimisation(ff, mf, cfg, name="pair1")
    files = sorted((tmp_path / "ckpt").glob("pair1_*.pt"))
    assert len(files) == 1  # n_saved=1: the latest (step 10) replaces step 5
    state = torch.load(files[0], weights_only=True)
    assert torch.equal(state["field"]["displacement"], out.field.displacement.detach())
    assert "state" in state["optimizer"]


def test_fused_step_equals_grid_sample_step():
    """The compiled one-pass similarity (and fused Adam) follow the grid_sample + autograd path step for step.

    float64 and a non-integer start (0.3 voxel): at exact voxel positions the interpolant's derivative jumps and
    grid_sample picks a side by float rounding, which Adam would turn into a full step either way.
    """
    from monai_contreg.optim.engine import RegistrationEvents as Ev

    img = smooth_volume((24, 20, 22), sigma=1.5).double()
    moving = torch.roll(img, shifts=2, dims=3)
    init = torch.full((1, 3, 24, 20, 22), 0.3, dtype=torch.float64)
    fields, seen = {}, {}
    for fused in (True, False):
        cfg = _shift_config(steps=15)
        cfg.engine.fused = fused
        ff, mf = compute_features(img, moving, cfg)
        shapes = []

        class Look:
            def attach(self, engine):
                engine.add_event_handler(Ev.LOSS_COMPUTED, lambda e: shapes.append(tuple(e.state.step_tensors["warped"].shape)))

        try:
            # a LOSS_COMPUTED handler switches to the autograd path: the compiled run has none
            out = instance_optimisation(ff, mf, cfg, init_ddf=init, handlers=[] if fused else [Look()])
        except RuntimeError as exc:  # fused=True where the compiled kernels cannot be built
            assert "fused=True needs" in str(exc)
            pytest.skip(str(exc))
        fields[fused] = out.field().detach()
        seen[fused] = out.kernels
    assert seen == {True: "compiled", False: "pytorch"} and shapes[0] == (1, 12, 24, 20, 22)
    assert (fields[True] - fields[False]).abs().max() < 1e-6
    assert fields[True][0, 1].mean() > 1.0  # it moved towards the 2-voxel shift


def test_fused_option_is_checked():
    f = torch.rand(1, 12, 6, 6, 6)
    with pytest.raises(RuntimeError, match="WarpedSSD: fused=True needs .* padding 'reflection'"):
        create_registration_engine(DisplacementField((6, 6, 6)), f, f, torch.optim.SGD(DisplacementField((6, 6, 6)).parameters(), lr=1),
                                   padding_mode="reflection", fused=True)


def test_warped_features_only_materialised_for_loss_computed_handlers():
    from monai_contreg.optim.engine import _has_handlers

    f = torch.rand(1, 12, 6, 6, 6)
    fld = DisplacementField((6, 6, 6))
    engine = create_registration_engine(fld, f, f, torch.optim.SGD(fld.parameters(), lr=1.0))
    assert not _has_handlers(engine, RegistrationEvents.LOSS_COMPUTED)
    engine.add_event_handler(RegistrationEvents.LOSS_COMPUTED, lambda e: None)
    assert _has_handlers(engine, RegistrationEvents.LOSS_COMPUTED)


def test_plateau_early_stopping_resets_per_run_and_saves_state():
    from ignite.engine import Engine

    losses = iter([5.0, 4.0, 4.0, 4.0, 4.0] + [9.0, 8.0, 7.0, 6.0, 5.0, 4.5])
    eng = Engine(lambda e, b: {"loss": next(losses)})
    stop = PlateauEarlyStopping(patience=3)
    stop.attach(eng)
    first = eng.run(range(6), max_epochs=1)
    assert first.iteration == 5 and stop.state_dict() == {"best": 4.0, "wait": 3}  # stopped after 3 flat steps
    # a second run with higher losses that keep improving: with the old state (best 4.0) it stopped at step 3
    second = Engine(lambda e, b: {"loss": next(losses)})
    stop.attach(second)
    state = second.run(range(6), max_epochs=1)
    assert state.iteration == 6 and stop.state_dict() == {"best": 4.5, "wait": 0}
    other = PlateauEarlyStopping(patience=3)
    other.load_state_dict({"best": 1.0, "wait": 2})
    assert other.state_dict() == {"best": 1.0, "wait": 2}
    with pytest.raises(KeyError, match="PlateauEarlyStopping.load_state_dict: missing keys"):
        other.load_state_dict({"best": 1.0})


def test_extra_loss_on_warped_reaches_the_field_on_the_default_path():
    """A LOSS_COMPUTED handler adding a loss on step_tensors["warped"] changes the result (no silent no-op)."""
    img = smooth_volume()
    cfg = _shift_config(steps=5)  # engine.fused default: the compiled kernels where available
    ff, mf = compute_features(img, torch.roll(img, 1, 2), cfg)
    base = instance_optimisation(ff, mf, cfg)

    class Pull:
        def attach(self, engine):
            def add(e):
                e.state.extra_loss = 50.0 * e.state.step_tensors["warped"].mean()

            engine.add_event_handler(RegistrationEvents.LOSS_COMPUTED, add)

    pulled = instance_optimisation(ff, mf, cfg, handlers=[Pull()])
    assert pulled.kernels == "pytorch"
    from monai_contreg.kernels import extension_status

    assert base.kernels == ("compiled" if extension_status().startswith("compiled") else "pytorch")
    assert (pulled.field() - base.field()).abs().max() > 1e-2  # before: identical fields (no gradient on warped)
