"""Handlers own their state as ignite's do (reset on STARTED, state_dict/load_state_dict), end-of-run checks know
a stopped run from a finished one, and a checkpoint resumes a run to the field an uninterrupted run ends with."""

import pytest
import torch
from ignite.engine import Engine, Events

from monai_contreg.errors import MissingFileError, RegistrationDivergedError
from monai_contreg.methods.config import RegistrationConfig
from monai_contreg.methods.io import compute_features, instance_optimisation, latest_checkpoint
from monai_contreg.optim.handlers import (
    DivergenceGuard,
    HistoryRecorder,
    KeypointTREMonitor,
    PlateauEarlyStopping,
    run_completed,
)

from tests.conftest import smooth_volume


class _Field:
    """Stands in for the DisplacementField: a constant displacement of ``frac`` of the 10-voxel extent on axis 0."""

    def __init__(self, frac: float):
        self.frac = frac

    def __call__(self):
        u = torch.zeros(1, 3, 10, 10, 10)
        u[:, 0] = self.frac * 10
        return u

    def ddf(self, shape):
        return torch.zeros(1, 3, *shape)


def _engine(frac=0.0, loss=1.0):
    e = Engine(lambda eng, _: {"loss": loss, "similarity": loss, "regularization": 0.0})
    e.state.field = _Field(frac)
    return e


def test_two_tre_monitors_on_one_engine_keep_their_own_history():
    """Before: both appended to one engine.state.tre_history list (5 entries in each 'history')."""
    pts = torch.tensor([[2.0, 2.0, 2.0], [5.0, 5.0, 5.0]])
    a = KeypointTREMonitor(pts, pts + 1, (10, 10, 10), every=2)
    b = KeypointTREMonitor(pts, pts, (10, 10, 10), every=3)
    e = _engine()
    a.attach(e)
    b.attach(e)
    e.run([0] * 6, max_epochs=1)
    assert [s for s, _ in a.history] == [2, 4, 6] and [s for s, _ in b.history] == [3, 6]
    assert all(abs(t - 3 ** 0.5) < 1e-6 for _, t in a.history) and all(t == 0 for _, t in b.history)


def test_history_is_reset_when_a_run_starts():
    """Before: a HistoryRecorder attached once kept appending across runs (2 x 4 entries)."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.5)
    rec = HistoryRecorder(opt)
    e = _engine()
    rec.attach(e)
    e.run([0] * 4, max_epochs=1)
    first = rec.history
    e.run([0] * 4, max_epochs=1)  # a finished engine restarts from step 0: a new run
    assert len(rec.history["loss"]) == 4 and len(first["loss"]) == 4 and e.state.history is rec.history


def test_state_dict_round_trips():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.5)
    rec = HistoryRecorder(opt)
    rec.history["loss"].append(3.0)
    other = HistoryRecorder(opt)
    other.load_state_dict(rec.state_dict())
    assert other.history["loss"] == [3.0]
    g, h = DivergenceGuard(), DivergenceGuard()
    g.first_loss = 2.5
    h.load_state_dict(g.state_dict())
    assert h.first_loss == 2.5
    p, q = PlateauEarlyStopping(5), PlateauEarlyStopping(5)
    p.best, p.wait = 1.0, 3
    q.load_state_dict(p.state_dict())
    assert (q.best, q.wait) == (1.0, 3)
    pts = torch.zeros(1, 3)
    m, n = KeypointTREMonitor(pts, pts, (4, 4, 4)), KeypointTREMonitor(pts, pts, (4, 4, 4))
    m.history.append((10, 1.5))
    n.load_state_dict(m.state_dict())
    assert n.history == [(10, 1.5)]
    with pytest.raises(KeyError, match="missing key 'first_loss'"):
        h.load_state_dict({})


def test_a_stopped_run_is_not_held_to_the_end_of_run_checks():
    """Before: a pruned tune trial (field at 0.41 of the extent, stopped at step 25) raised RegistrationDivergedError."""
    e = _engine(frac=0.41)
    DivergenceGuard(every=100).attach(e)

    @e.on(Events.ITERATION_COMPLETED(once=25))
    def _prune(engine):
        engine.terminate()

    e.run([0] * 100, max_epochs=1)
    assert e.state.iteration == 25 and not run_completed(e)
    # the same field at the end of a finished run is refused
    done = _engine(frac=0.41)
    DivergenceGuard(every=100).attach(done)
    with pytest.raises(RegistrationDivergedError, match=r"end of run diverged.*0.41 of the image extent"):
        done.run([0] * 30, max_epochs=1)
    assert run_completed(done)
    # a stopped run whose field is off even by the loose in-run bound is still stopped
    far = _engine(frac=1.5)
    DivergenceGuard(every=100).attach(far)
    far.add_event_handler(Events.ITERATION_COMPLETED(once=5), lambda eng: eng.terminate())
    with pytest.raises(RegistrationDivergedError, match="stopped early"):
        far.run([0] * 30, max_epochs=1)


def _cfg(tmp_path, steps=12):
    cfg = RegistrationConfig()
    cfg.field.grid_factor = 1
    cfg.optim.reg_weight = 0.1
    cfg.engine.divergence_check = True
    cfg.engine.divergence_min_steps = 100  # plumbing on tiny images: the guard's state is saved, never trips
    cfg.engine.fused = False
    s = cfg.optim.schedule
    s.peak_lr, s.constant_steps, s.cosine_end, s.total_steps, s.cosine_period, s.final_lr = 0.5, 4, 10, steps, 6, 0.05
    cfg.engine.checkpoint_dir = str(tmp_path / "ckpt")
    cfg.engine.checkpoint_every = 5
    return cfg


class _Interrupt(Exception):
    pass


class _Counter:
    def __init__(self, stop_at=None):
        self.steps, self.stop_at = [], stop_at

    def attach(self, engine):
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine):
        self.steps.append(engine.state.iteration)
        if engine.state.iteration == self.stop_at:
            raise _Interrupt()


def test_a_run_interrupted_at_step_k_resumes_to_the_uninterrupted_field(tmp_path):
    """Before: checkpoints held only the field and the optimiser; nothing loaded them back (engine.resume)."""
    torch.manual_seed(0)
    img = smooth_volume((16, 14, 12), sigma=1.5)
    moving = torch.roll(img, 1, 2)
    cfg = _cfg(tmp_path)
    ff, mf = compute_features(img, moving, cfg)
    cfg_plain = _cfg(tmp_path / "plain")
    whole = instance_optimisation(ff, mf, cfg_plain, name="pair")

    with pytest.raises(_Interrupt):
        instance_optimisation(ff, mf, cfg, name="pair", handlers=[_Counter(stop_at=7)])
    assert latest_checkpoint(cfg.engine.checkpoint_dir, "pair").name == "pair_checkpoint_5.pt"
    cfg.engine.resume = True
    count = _Counter()
    resumed = instance_optimisation(ff, mf, cfg, name="pair", handlers=[count])
    assert count.steps == list(range(6, 13))  # steps 6..12 run again, 1..5 come from the checkpoint
    assert resumed.steps == whole.steps == 12
    assert torch.allclose(resumed.field.displacement, whole.field.displacement, rtol=0, atol=1e-6)
    assert resumed.history["lr"] == pytest.approx(whole.history["lr"])
    assert resumed.history["loss"] == pytest.approx(whole.history["loss"], rel=1e-5)
    with pytest.raises(MissingFileError, match="no checkpoint other_checkpoint_<step>.pt"):
        instance_optimisation(ff, mf, cfg, name="other")
