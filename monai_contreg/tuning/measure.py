"""Registering and scoring one pair as ``contreg evaluate`` does (:class:`PairMetrics`), and
:func:`evaluate_configs`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import UserInputError
from ..methods.config import RegistrationConfig


# ------------------------------------------------------------------------------------------------- measuring
@dataclass
class PairMetrics:
    """What one registration of one pair scored (the metric code of ``contreg evaluate``).

    Attributes:
        key: case key ``"FFFF_MMMM"``.
        tre: mean keypoint TRE (mm) or ``None`` without keypoints.
        dice: mean Dice of warped labels (else masks) or ``None`` when not measured.
        sdlogj: true std of log det J (fixed mask, 2-voxel border cropped).
        folding_percent: % of ``det J <= 0`` (whole grid, border cropped).
        seconds: registration time (``register``'s total).
        steps: Adam steps taken.
    """

    key: str
    tre: float | None
    dice: float | None
    sdlogj: float
    folding_percent: float
    seconds: float
    steps: int


class _PairCache:
    """The tuning pairs with their evaluation data, loaded once per process."""

    def __init__(self, dataset: str, split: str, keys: Sequence[str], with_labels: bool) -> None:
        from ..data.learn2reg import Learn2RegDataset

        self.ds = Learn2RegDataset(dataset)
        by_key = {p.key: p for p in self.ds.pairs(split)}
        self.pairs = [by_key[k] for k in keys]
        self.with_labels = with_labels
        self._data: dict[str, dict[str, Any]] = {}
        self._grids: dict[str, Any] = {}

    def grid(self, pair):
        """The fixed image's :class:`~monai_contreg.spatial.grid.Grid` (from its header), read once per process."""
        if pair.key not in self._grids:
            from ..data.learn2reg import image_grid

            self._grids[pair.key] = image_grid(pair.fixed)
        return self._grids[pair.key]

    def data(self, pair) -> dict[str, Any]:
        if pair.key not in self._data:
            want = ["fixed_mask", "moving_mask", "fixed_keypoints", "moving_keypoints"]
            if self.with_labels:
                want += ["fixed_label", "moving_label"]
            want = [k for k in want if getattr(pair, k) is not None]
            self._data[pair.key] = self.ds.load_pair(pair, keys=want) if want else {}
        return self._data[pair.key]


def _keypoints(data: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor] | None:
    if "fixed_keypoints" not in data or "moving_keypoints" not in data:
        return None
    return tuple(torch.as_tensor(data[k]).as_subclass(torch.Tensor).double() for k in ("fixed_keypoints", "moving_keypoints"))


def _register_and_measure(pair, data: dict[str, Any], cfg: RegistrationConfig, device, handlers=None,
                          dice: bool = False, stop: Callable[[], bool] | None = None,
                          max_memory: str | float | int | None = None) -> PairMetrics | None:
    """Register one pair (:func:`~monai_contreg.api.register`, which refuses a grid whose estimated peak memory
    exceeds ``max_memory`` before it runs) and score the field; ``None`` when ``stop()`` says a handler ended the
    run early."""
    from ..api import register
    from ..evaluation.learn2reg import evaluate_field

    if not dice:  # no moving segmentation: evaluate_field skips Dice/HD95 (the fixed mask still bounds SDlogJ)
        data = {k: v for k, v in data.items() if k not in ("moving_mask", "moving_label")}

    res = register(pair.fixed, pair.moving, fixed_mask=pair.fixed_mask, moving_mask=pair.moving_mask, config=cfg,
                   device=device, handlers=handlers, name=pair.key, max_memory=max_memory)
    if stop is not None and stop():  # a handler ended the run early (pruned): nothing to measure
        return None
    # the grids the registration ran on, carried by its result (no second read of the headers)
    fixed_sp, moving_sp = res.fixed_grid.spacing, res.moving_grid.spacing
    scores = evaluate_field(res.ddf.as_tensor(), data, fixed_spacing=fixed_sp, moving_spacing=moving_sp, official_tre=False)
    return PairMetrics(
        key=pair.key,
        tre=scores["TRE_kp"]["mean"] if "TRE_kp" in scores else None,
        dice=scores["Dice"]["mean"] if "Dice" in scores else None,
        sdlogj=float(scores["SDlogJ"]["mean"]),
        folding_percent=float(scores["folding_percent"]["mean"]),
        seconds=float(res.timings.get("total", 0.0)),
        steps=int(res.steps),
    )



def _select_pairs(where: str, ds, split: str, wanted: Sequence[str] | None, what: str):
    pairs = ds.pairs(split)
    if not pairs:
        raise UserInputError(f"{where}: split {ds.resolve_split(split)!r} of {ds.json_path.name} lists no pairs.")
    if not wanted:
        return pairs
    out = []
    for w in wanted:
        w = str(w).strip()
        hit = [p for p in pairs if w in (p.key, p.fixed_case)]
        if not hit:
            raise UserInputError(
                f"{where}: {what} {w!r} is not a pair of split {ds.resolve_split(split)!r}; its pairs are "
                f"{[p.key for p in pairs]} (give the key or the fixed case id)."
            )
        out.extend(p for p in hit if p not in out)
    return out



def evaluate_configs(
    dataset: str | Path,
    split: str,
    configs: Mapping[str, RegistrationConfig],
    pairs: Sequence[str] | None = None,
    *,
    device: str | None = None,
    threads: int | None = None,
    on_pair: Callable[[str, PairMetrics], None] | None = None,
    dice: bool = False,
    max_memory: str | float | int | None = None,
) -> dict[str, list[PairMetrics]]:
    """Register the pairs with each config (in turn, one process) and score them as ``contreg evaluate`` does.

    Args:
        dataset: Learn2Reg folder or description file.
        split: split name or alias.
        configs: ``{name: config}``.
        pairs: keys or fixed case ids (default: the whole split).
        device: passed to :func:`~monai_contreg.api.register`.
        threads: torch CPU threads (``engine.num_threads``) of each registration.
        on_pair: called as ``on_pair(name, metrics)`` after each registration.
        dice: also measure Dice (and HD95, the cost of ``contreg evaluate``) of the warped labels or masks.
        max_memory: memory a registration may use, bytes or ``"8G"`` (``None``: 80 % of the available memory);
            each registration is refused before it runs when its estimated peak exceeds it.

    Returns:
        ``{name: [PairMetrics per pair]}``.

    Raises:
        UserInputError: bad split or pairs, or a registration over ``max_memory`` (before it runs).
    """
    from ..data.learn2reg import Learn2RegDataset

    ds = Learn2RegDataset(dataset)
    chosen = _select_pairs("evaluate_configs", ds, split, pairs, "pair")
    cache = _PairCache(str(ds.json_path), split, [p.key for p in chosen], with_labels=dice)
    out: dict[str, list[PairMetrics]] = {}
    for name, cfg in configs.items():
        cfg = RegistrationConfig.from_dict({}, cfg)
        cfg.engine.num_threads = threads or 0
        out[name] = []
        for pair in cache.pairs:
            m = _register_and_measure(pair, cache.data(pair), cfg, device, dice=dice, max_memory=max_memory)
            out[name].append(m)
            if on_pair is not None:
                on_pair(name, m)
    return out
