"""Weight averaging at the end of a run: stochastic weight averaging over the last epochs, or the mean of the top-k
checkpoints, with the BatchNorm statistics recomputed for the averaged weights.

- SWA (Izmailov, Podoprikhin, Garipov, Vetrov, Wilson 2018, "Averaging Weights Leads to Wider Optima and Better
  Generalization"): the equal-weight mean of the weights at the end of each of the last ``swa_epochs`` epochs
  (``torch.optim.swa_utils.AveragedModel``), as the Cassava Leaf Disease solutions used it.
- Top-k: the mean of the weights of the ``top_k`` epochs with the best monitored score (checkpoint averaging; the
  Cassava and Understanding Clouds teams averaged their best snapshots). Each candidate's weights are kept in
  ``<fold>/topk/epoch<e>.pt`` until a better epoch pushes it out.

Averaged weights never saw their own BatchNorm statistics, so ``recompute_bn`` runs the training loader through the
averaged model once (in train mode, without gradients, momentum None: the cumulative mean), as
``torch.optim.swa_utils.update_bn`` does; the kit's batches are dicts, which ``update_bn`` does not read.

The averager's state (the running SWA model, the top-k list) travels in ``last.pt``, so a killed run resumes with it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from kitlib.io import atomic_path, read_torch
from kitlib.runtime import to_device, unwrap

__all__ = ["WeightAverage", "recompute_bn"]

log = logging.getLogger(__name__)


@torch.no_grad()
def recompute_bn(model: nn.Module, batches: Iterable[Mapping[str, Any]], device: torch.device,
                 channels_last: bool = False) -> int:  # fmt: skip
    """Reset every BatchNorm's running mean and variance and recompute them over ``batches`` (their ``image``).

    Args:
        model: the averaged model; its train/eval mode is restored afterwards.
        batches: the training loader (dict batches).
        device, channels_last: as training.
    Returns:
        The number of BatchNorm layers updated (0: nothing to do, the batches were not read).
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    momenta = {}
    for norm in norms:
        norm.reset_running_stats()
        momenta[norm] = norm.momentum
        norm.momentum = None  # cumulative moving average over the pass
    was_training = model.training
    model.train()
    try:
        for batch in batches:
            images, _ = to_device(batch, device, channels_last, None)
            model(images)
    finally:
        for norm, momentum in momenta.items():
            norm.momentum = momentum
        model.train(was_training)
    return len(norms)


class WeightAverage:
    """SWA over the last epochs or the mean of the top-k epochs of one run (module docstring).

    Args:
        model: the model being trained (possibly DDP-wrapped).
        out_dir: the fold folder (top-k snapshots go to ``out_dir/topk/``).
        n_epochs: the run's epochs.
        swa_epochs: average the last ``swa_epochs`` epochs (0: no SWA).
        top_k: average the ``top_k`` best epochs by the monitored score (0: none).
        minimise: whether a lower monitored score is better.
    Raises:
        ValueError: both SWA and top-k asked for; a negative count; more epochs to average than the run has.
    """

    def __init__(self, model: nn.Module, out_dir: str | os.PathLike, n_epochs: int, swa_epochs: int = 0,
                 top_k: int = 0, minimise: bool = False):  # fmt: skip
        if swa_epochs < 0 or top_k < 0 or (swa_epochs and top_k):
            raise ValueError(f"average either the last swa_epochs or the top_k epochs, got {swa_epochs}, {top_k}")
        if max(swa_epochs, top_k) > n_epochs:
            raise ValueError(f"cannot average {max(swa_epochs, top_k)} epochs of a {n_epochs}-epoch run")
        self.out_dir, self.n_epochs = Path(out_dir), n_epochs
        self.swa_epochs, self.top_k, self.minimise = swa_epochs, top_k, minimise
        self.swa = AveragedModel(unwrap(model), use_buffers=False) if swa_epochs else None
        self.kept: list[tuple[float, int]] = []  # (score, epoch) of the top-k snapshots, best first

    @property
    def active(self) -> bool:
        return bool(self.swa_epochs or self.top_k)

    @property
    def description(self) -> str:
        return f"swa over the last {self.swa_epochs} epochs" if self.swa_epochs else f"mean of the top {self.top_k}"

    def _snapshot(self, epoch: int) -> Path:
        return self.out_dir / "topk" / f"epoch{epoch}.pt"

    def after_epoch(self, model: nn.Module, epoch: int, score: float, write: bool = True) -> None:
        """Add the weights at the end of ``epoch`` (0-based) with its monitored ``score``; ``write`` False (DDP ranks
        other than 0) keeps the top-k bookkeeping without writing the snapshot files."""
        if self.swa is not None and epoch >= self.n_epochs - self.swa_epochs:
            self.swa.update_parameters(unwrap(model))
        if not self.top_k or score != score:  # NaN scores never enter the top k
            return
        ranked = sorted([*self.kept, (score, epoch)], key=lambda x: (x[0] if self.minimise else -x[0], x[1]))
        if (score, epoch) not in ranked[: self.top_k]:
            return
        if write:
            with atomic_path(self._snapshot(epoch)) as tmp:
                torch.save({k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}, tmp)
            for _, dropped in ranked[self.top_k :]:
                self._snapshot(dropped).unlink(missing_ok=True)
        self.kept = ranked[: self.top_k]

    def averaged(self, model: nn.Module) -> nn.Module:
        """A copy of the model holding the averaged weights (BatchNorm statistics still to recompute).

        Raises:
            FileNotFoundError: a top-k snapshot is missing (the message names it).
            ValueError: nothing was averaged.
        """
        import copy

        target = copy.deepcopy(unwrap(model))
        if self.swa is not None:
            if int(self.swa.n_averaged) == 0:
                raise ValueError("SWA averaged no epoch")
            target.load_state_dict(self.swa.module.state_dict())
            return target
        if not self.kept:
            raise ValueError("top-k averaging kept no epoch (every monitored score was NaN)")
        states = [read_torch(self._snapshot(e), "weight snapshot") for _, e in self.kept]
        mean = {}
        for key, value in states[0].items():
            if value.is_floating_point():
                mean[key] = sum(s[key].double() for s in states).div(len(states)).to(value.dtype)
            else:
                mean[key] = value  # integer buffers (num_batches_tracked): the best epoch's
        target.load_state_dict(mean)
        return target

    def state_dict(self) -> dict[str, Any]:
        return {"swa": None if self.swa is None else self.swa.state_dict(), "kept": [list(k) for k in self.kept]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if self.swa is not None and state.get("swa") is not None:
            self.swa.load_state_dict(state["swa"])
        self.kept = [(float(s), int(e)) for s, e in state.get("kept", [])]
