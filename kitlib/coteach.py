"""Co-teaching: two networks, each updated on the images the other finds easy (small loss), so that the images
whose labels are wrong, which both networks learn last, stay out of the updates.

Han et al. 2018, "Co-teaching: Robust training of deep neural networks with extremely noisy labels" (NeurIPS,
Algorithm 1); the Dacon building-segmentation team trained with it per image. In epoch T (0-based: the epochs
already trained) each network keeps the fraction R(T) = 1 - min(T / T_k * tau, tau) of every batch with the smallest
loss under it, and the *other* network is updated on those images only: the forget rate rises linearly from 0 to
``tau`` (about the estimated noise rate) over the first ``T_k`` epochs and stays there.

- ``CoTeachingModel``: the two networks in one module. In train mode ``forward`` returns ``{"a": out_a, "b":
  out_b}``; in eval mode the outputs of network a, of b, or the mean of their logits (``predict``), so validation,
  ``best.pt``, OOF, TTA and test inference see one model. ``kitlib.models`` rebuilds it from a ``model_config`` with
  a ``coteach`` entry, so ``best.pt`` / ``last.pt`` hold (and resume) both networks.
- ``CoTeachingLoss``: the selection and the summed loss of the two networks. One optimiser over both networks'
  parameters (``merge_param_groups``) steps exactly as two optimisers would: the summed loss's gradient w.r.t. a
  network's parameters is that network's own loss's (the parameters are disjoint). Global gradient clipping, if on,
  clips the two networks' gradients together.

Written here (no maintained library implements co-teaching for arbitrary PyTorch losses); the selection calls the
run's own loss per image, so every loss of the kit works, segmentation losses, ``SegClsLoss`` with a classification
head and soft targets of batch mixes included.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["PREDICT", "CoTeachingModel", "CoTeachingLoss", "forget_rate", "is_pair", "merge_param_groups"]

#: What a ``CoTeachingModel`` predicts in eval mode: network a's outputs, b's, or the mean of their logits.
PREDICT = ("a", "b", "mean")


def forget_rate(epoch: int, tau: float, t_k: int) -> float:
    """min(T / T_k * tau, tau): the fraction of each batch left out of the other network's update in epoch T
    (Han et al. 2018, R(T) = 1 - this).

    Args:
        epoch: T, 0-based (epoch 0 forgets nothing).
        tau: the final forget rate in [0, 1).
        t_k: epochs until it is reached, >= 1.
    Raises:
        ValueError: tau outside [0, 1), t_k < 1 or a negative epoch.
    """
    _check(tau, t_k)
    if epoch < 0:
        raise ValueError(f"co-teaching: epoch must be >= 0, got {epoch}")
    return min(epoch / t_k * tau, tau)


def _check(tau: float, t_k: int) -> None:
    if not 0.0 <= tau < 1.0:
        raise ValueError(f"co-teaching: tau (the forget rate) must be in [0, 1), got {tau}")
    if int(t_k) != t_k or t_k < 1:
        raise ValueError(f"co-teaching: T_k (coteach_epochs) must be an integer >= 1, got {t_k}")


def is_pair(outputs: Any) -> bool:
    """Whether ``outputs`` is a ``CoTeachingModel``'s train-mode output (``{"a": ..., "b": ...}``)."""
    return isinstance(outputs, dict) and set(outputs) == {"a", "b"}


def _mean(a: Any, b: Any) -> Any:
    """The mean of two outputs of the same structure: tensors, or tuples of tensors (``(mask_logits, cls_logits)``)."""
    if isinstance(a, (tuple, list)):
        return type(a)(_mean(x, y) for x, y in zip(a, b, strict=True))
    return (a + b) / 2


class CoTeachingModel(nn.Module):
    """Two networks built alike (``net_a``, ``net_b``, different initial weights) trained by ``CoTeachingLoss``.

    Args:
        net_a, net_b: models with the same outputs (logits, or ``(mask_logits, cls_logits)``).
        predict: eval-mode output: "a", "b" or "mean" (the mean of the two networks' logits, each element of a tuple).
    Forward:
        x (N, C, H, W) float32 -> train mode: ``{"a": net_a(x), "b": net_b(x)}``; eval mode: the chosen outputs,
        shaped as one network's.
    Raises:
        ValueError: an unknown ``predict``.
    """

    def __init__(self, net_a: nn.Module, net_b: nn.Module, predict: str = "mean") -> None:
        super().__init__()
        if predict not in PREDICT:
            raise ValueError(f"co-teaching: predict must be one of {list(PREDICT)}, got {predict!r}")
        self.net_a, self.net_b, self.predict = net_a, net_b, predict

    @property
    def networks(self) -> tuple[nn.Module, nn.Module]:
        return self.net_a, self.net_b

    def forward(self, x: torch.Tensor) -> Any:
        if self.training:
            return {"a": self.net_a(x), "b": self.net_b(x)}
        if self.predict == "a":
            return self.net_a(x)
        if self.predict == "b":
            return self.net_b(x)
        return _mean(self.net_a(x), self.net_b(x))


def merge_param_groups(groups: Sequence[Sequence[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One list of optimiser groups from each network's ``kitlib.models.param_groups``: the groups of the same name
    (``encoder``, ``decoder_no_decay``, ...) joined, so both networks keep the differential learning rates and the
    history keeps one ``lr_<name>`` column per group.

    Raises:
        ValueError: groups of the same name with another learning rate or weight decay.
    """
    merged: dict[str, dict[str, Any]] = {}
    for network in groups:
        for group in network:
            name = group["name"]
            if name not in merged:
                merged[name] = {**group, "params": list(group["params"])}
                continue
            other = merged[name]
            if (other["lr"], other["weight_decay"]) != (group["lr"], group["weight_decay"]):
                raise ValueError(f"co-teaching: parameter group {name!r} differs between the networks")
            other["params"].extend(group["params"])
    return list(merged.values())


def _take(value: Any, index: torch.Tensor) -> Any:
    """Rows ``index`` of a batch value: a tensor, a tuple / list / dict of them, or None."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        return value[index.to(value.device)]
    if isinstance(value, (tuple, list)):
        return type(value)(_take(v, index) for v in value)
    if isinstance(value, dict):
        return {k: _take(v, index) for k, v in value.items()}
    raise TypeError(f"co-teaching: cannot select rows of a {type(value).__name__}")


def _batch_size(outputs: Any) -> int:
    first = outputs[0] if isinstance(outputs, (tuple, list)) else outputs
    return int(first.shape[0])


#: ``(one network's outputs, targets) -> scalar loss``: the run's loss on a (sub-)batch (``kitlib.engine``'s
#: ``compute_loss`` with the base loss).
LossCall = Callable[[Any, torch.Tensor], torch.Tensor]


class CoTeachingLoss(nn.Module):
    """Co-teaching's loss of a batch (Han et al. 2018, Algorithm 1): each network's loss on the R(T) fraction of the
    batch with the smallest loss under the other network, summed.

    Args:
        base: the run's loss (any kit loss; ``kitlib.engine.compute_loss`` calls it per image to rank the images and
            on the kept images for the update).
        tau: the forget rate reached after ``t_k`` epochs, in [0, 1); about the estimated label-noise rate.
        t_k: epochs of the linear rise of the forget rate (``forget_rate``), >= 1.
    Attributes:
        epoch: T, set by ``set_epoch`` (``kitlib.engine.train_one_epoch`` calls it every epoch).
        last_values: of the last training batch: ``forget_rate``, ``loss_a``, ``loss_b`` (the history's
            ``train_forget_rate``, ``train_loss_a``, ``train_loss_b``).
    Raises:
        ValueError: tau or t_k out of range.
    """

    def __init__(self, base: nn.Module, tau: float, t_k: int) -> None:
        super().__init__()
        _check(tau, t_k)
        self.base, self.tau, self.t_k, self.epoch = base, float(tau), int(t_k), 0
        self.last_values: dict[str, float] = {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @property
    def forget_rate(self) -> float:
        return forget_rate(self.epoch, self.tau, self.t_k)

    def keep_count(self, batch: int) -> int:
        """Images of a batch of ``batch`` each network keeps: floor(R(T) x batch) (Han et al.'s ``int(remember_rate
        * len)``), at least 1."""
        return max(1, math.floor((1.0 - self.forget_rate) * batch + 1e-6))

    def select(self, outputs: Any, target: torch.Tensor, call: LossCall) -> torch.Tensor:
        """Indices (k,) int64 of the ``keep_count`` images with the smallest per-image loss under ``outputs`` (one
        network's), ties in batch order. The per-image losses are computed without gradients."""
        n = _batch_size(outputs)
        with torch.no_grad():
            losses = torch.stack([call(_take(outputs, idx), _take(target, idx)).detach().float().reshape(())
                                  for idx in torch.arange(n).split(1)])  # fmt: skip
        return torch.argsort(losses.cpu(), stable=True)[: self.keep_count(n)]

    def forward(self, outputs: Any, target: torch.Tensor, call: LossCall | None = None) -> torch.Tensor:
        """The summed loss of the two networks (train mode), or the base loss of one output (eval mode).

        Args:
            outputs: ``{"a": ..., "b": ...}`` (``CoTeachingModel`` in train mode), or one network's outputs.
            target: the batch's targets (B, ...): masks, labels or soft targets.
            call: the loss of one network's outputs on a (sub-)batch; default ``base(logits, target)``.
        Returns:
            A scalar: loss_a(kept by b) + loss_b(kept by a); with forget rate 0, both on the whole batch.
        """
        call = call or (lambda out, tgt: self.base(out, tgt))
        if not is_pair(outputs):
            return call(outputs, target)
        out_a, out_b = outputs["a"], outputs["b"]
        rate = self.forget_rate
        if self.keep_count(_batch_size(out_a)) == _batch_size(out_a):
            loss_a, loss_b = call(out_a, target), call(out_b, target)
        else:
            kept_by_a, kept_by_b = self.select(out_a, target, call), self.select(out_b, target, call)
            loss_a = call(_take(out_a, kept_by_b), _take(target, kept_by_b))  # a learns what b finds easy
            loss_b = call(_take(out_b, kept_by_a), _take(target, kept_by_a))
        self.last_values = {"forget_rate": rate, "loss_a": float(loss_a.detach()), "loss_b": float(loss_b.detach())}
        return loss_a + loss_b
