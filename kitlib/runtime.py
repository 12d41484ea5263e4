"""Where and how a run executes: seeds, devices, DDP ranks, data loaders, mixed precision.

Determinism: ``make_loader``'s order depends only on ``(seed, epoch)`` and every worker's ``random`` / numpy /
albumentations seeds come from the loader's seeded generator (``seed_worker``); ``kitlib.engine.fit`` reseeds each
epoch from ``epoch_seed(seed, epoch)``, so an epoch draws the same batches whether the run started at epoch 0 or
resumed. DDP under ``torchrun``: ``init_distributed`` joins the process group, training loaders shard with a
``DistributedSampler``, evaluation loaders give each rank every world-size-th row (``ShardSampler``), and
``all_reduce`` / ``barrier`` are no-ops in a single process.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler

from kitlib.recipes import AMP_MODES

__all__ = [
    "DistInfo",
    "ShardSampler",
    "WeightedShardSampler",
    "all_reduce",
    "autocast",
    "barrier",
    "compile_model",
    "dist_info",
    "epoch_seed",
    "init_distributed",
    "make_loader",
    "resolve_amp",
    "resolve_device",
    "seed_everything",
    "seed_transform",
    "seed_worker",
    "set_threads",
    "to_device",
    "unwrap",
]


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch`` of a run seeded ``seed``, in [0, 2**31)."""
    return (int(seed) * 1_000_003 + int(epoch)) % 2**31


def seed_everything(seed: int) -> None:
    """Seed ``random``, numpy and torch (CPU and every CUDA device).

    Args:
        seed: any int; reduced modulo 2**32 for numpy.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - the global state is what third-party code draws from
    torch.manual_seed(seed)


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: derive ``random``, numpy and the dataset's albumentations seeds from the
    worker's torch seed, which the loader draws from its (seeded) generator, so workers differ from each other and
    runs repeat. albumentations 2.0 pipelines carry their own generator (``Compose.set_random_seed``), which a
    forked worker would otherwise copy unchanged into every worker."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002
    info = torch.utils.data.get_worker_info()
    seed_transform(getattr(info.dataset, "transform", None) if info is not None else None, seed)


def seed_transform(transform: Any, seed: int) -> None:
    if transform is not None and callable(getattr(transform, "set_random_seed", None)):
        transform.set_random_seed(int(seed))


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in a ``torchrun`` job (rank 0 of 1 without one)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_info() -> DistInfo:
    """The rank, world size and local rank that ``torchrun`` put in the environment (0, 1, 0 otherwise)."""
    return DistInfo(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def init_distributed(device: str = "auto") -> tuple[DistInfo, torch.device]:
    """Join the ``torchrun`` process group when there is one, and pick this process's device.

    Args:
        device: "auto" (``cuda:<local_rank>`` when CUDA is available, else CPU), "cpu", "cuda" or "cuda:N".
    Returns:
        ``(DistInfo, torch.device)``. With WORLD_SIZE > 1 the default process group is initialised (NCCL on CUDA,
        gloo on CPU) unless it already is.
    Raises:
        RuntimeError: "cuda" asked for but not available.
    """
    info = dist_info()
    dev = resolve_device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", info.local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if info.enabled and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return info, dev


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> ``cuda`` when torch sees a GPU, else ``cpu``; anything else as ``torch.device``.

    Raises:
        RuntimeError: a CUDA device asked for but torch sees none.
    """
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {str(device)!r} asked for, but torch sees no CUDA device")
    return dev


def set_threads(num_threads: int) -> int:
    """Set torch's intra-op threads (``torch.set_num_threads``) and return how many it uses.

    Args:
        num_threads: >= 1: that many; 0: leave torch's default (one per physical core, or ``OMP_NUM_THREADS``).
            On a CPU that other processes share, fewer threads than cores is faster: OpenMP threads that wait for a
            busy core at every barrier (``benchmarks/bench_walltime.py --threads``: 1 thread 2-3x faster than 2 on 2
            shared cores). Results differ between thread counts in the last bits (the order of float sums), never
            between two runs with the same count.
    Raises:
        ValueError: num_threads < 0.
    """
    if num_threads < 0:
        raise ValueError(f"num_threads must be >= 0 (0: torch's default), got {num_threads}")
    if num_threads:
        torch.set_num_threads(int(num_threads))
    return torch.get_num_threads()


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP / ``torch.compile`` / AveragedModel wrapper."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def compile_model(model: nn.Module, cfg: Any) -> nn.Module:
    """``torch.compile(model, mode=cfg.compile_mode, backend=cfg.compile_backend or "inductor")`` when
    ``cfg.compile`` (``TrainConfig`` / ``SubmitConfig``), else ``model`` itself.

    The compiled module runs the plain module's parameters (the same weights, so ``compile`` is not part of
    ``run_id``); only its ``state_dict`` keys gain ``_orig_mod.``. The kit saves, averages (EMA, SWA) and loads
    through ``unwrap(model)``, so checkpoints hold the plain keys and load into a compiled or a plain model alike
    (``kitlib.pretrained.read_state_dict`` also strips ``_orig_mod.`` from files written elsewhere). Compiling
    happens at the first batch of each input shape and train/eval mode (slow: tens of seconds on a GPU, minutes
    for inductor on a CPU); the speed-up follows.

    Args:
        model: on its device (a DDP wrapper is compiled around, as PyTorch's DDP notes advise).
        cfg: has ``compile`` (bool), ``compile_mode`` (None or a torch.compile mode; inductor only) and
            ``compile_backend`` (None: "inductor"; "aot_eager" / "eager" trace without generating code: tests,
            debugging); a config without ``compile`` (an older kit's) is not compiled.
    Returns:
        The compiled module (``torch._dynamo.OptimizedModule``) or ``model``.
    Raises:
        RuntimeError: the backend cannot run here: inductor on a CPU without a C++ compiler (``g++``, or ``CXX``),
            inductor on CUDA without triton. The message names the parameter and the ways out.
    """
    if not getattr(cfg, "compile", False):
        return model
    backend = getattr(cfg, "compile_backend", None) or "inductor"
    mode = getattr(cfg, "compile_mode", None)
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    if backend == "inductor":
        problem = None
        if device.type == "cpu":
            from torch._inductor.cpp_builder import get_cpp_compiler

            try:
                get_cpp_compiler()
            except Exception as e:  # torch raises its InvalidCxxCompiler or an OSError
                problem = f"no C++ compiler for inductor's CPU code ({type(e).__name__}: {e})"
        elif device.type == "cuda":
            from torch.utils._triton import has_triton

            if not has_triton():
                problem = "inductor's CUDA code needs triton, which is not installed"
        if problem:
            raise RuntimeError(
                f"compile=True: torch.compile(backend='inductor') cannot run on {device}: {problem}. Install one "
                "(apt-get install g++ / pip install triton), set -p compile_backend aot_eager, or -p compile false"
            )
    return torch.compile(model, mode=mode, backend=backend)


def all_reduce(values: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        values = values.clone()
        dist.all_reduce(values)
    return values


def barrier() -> None:
    """Wait for every DDP rank (no-op in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


class ShardSampler(Sampler[int]):
    """Rows rank, rank + world, ... in order: every row once over all ranks, no padding (evaluation, OOF)."""

    def __init__(self, n: int, rank: int, world_size: int):
        self.indices = list(range(rank, n, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class WeightedShardSampler(Sampler[int]):
    """Rows drawn with replacement in proportion to ``weights``, one draw per epoch from ``(seed, epoch)``, sharded
    over DDP ranks: the class-balanced sampling of images that hold rare classes (the trash-sorting team oversampled
    its rare classes). ``torch.utils.data.WeightedRandomSampler`` neither shards nor reseeds per epoch.

    Args:
        weights: (N,) non-negative, not all 0.
        rank, world_size: the DDP position.
        seed: the draw of epoch e is ``torch.multinomial`` with generator seed ``seed + e``.
    Raises:
        ValueError: negative, non-finite or all-zero weights.
    """

    def __init__(self, weights, rank: int = 0, world_size: int = 1, seed: int = 0):
        w = torch.as_tensor(weights, dtype=torch.float64)
        if w.dim() != 1 or not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise ValueError("sampling weights must be a 1-D array of finite values >= 0, not all 0")
        self.weights, self.rank, self.world_size, self.seed, self.epoch = w, rank, world_size, seed, 0
        self.per_rank = -(-len(w) // world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        drawn = torch.multinomial(self.weights, self.per_rank * self.world_size, replacement=True, generator=g)
        return iter(drawn[self.rank :: self.world_size].tolist())

    def __len__(self) -> int:
        return self.per_rank


def make_loader(
    dataset: Dataset,
    batch_size: int,
    train: bool,
    seed: int = 0,
    num_workers: int = 0,
    info: DistInfo | None = None,
    drop_last: bool | None = None,
    pin_memory: bool = False,
    weights=None,
) -> DataLoader:
    """A DataLoader whose order depends only on ``(seed, epoch)``, sharded over DDP ranks.

    Training loaders shuffle with a ``DistributedSampler`` (also in a single process: world size 1), whose
    permutation is ``seed + epoch``; ``train_one_epoch`` calls its ``set_epoch``. Evaluation loaders give rank r the
    rows r, r + world, ... in order, each row exactly once.

    Args:
        dataset: a ``kitlib.data`` dataset (items are dicts).
        batch_size: images per batch per process.
        train: shuffle and (by default) drop the last incomplete batch, so BatchNorm never sees a batch of one.
        seed: shuffling seed.
        num_workers: loader processes; their ``random``/numpy/albumentations seeds come from ``seed_worker``.
        info: DDP position (``dist_info()`` by default).
        drop_last: override of the default (``train and len(dataset) > batch_size``).
        pin_memory: pin host memory (CUDA).
        weights: (N,) sampling weights of a training loader (``WeightedShardSampler``: drawn with replacement, as
            many rows per epoch as the dataset has); None: every row once per epoch.
    """
    info = info or dist_info()
    if drop_last is None:
        drop_last = train and len(dataset) // max(info.world_size, 1) > batch_size
    if train and weights is not None:
        sampler: Sampler = WeightedShardSampler(weights, info.rank, info.world_size, seed)
    elif train:
        sampler = DistributedSampler(
            dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=seed, drop_last=False
        )
    else:
        sampler = ShardSampler(len(dataset), info.rank, info.world_size)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        worker_init_fn=seed_worker if num_workers else None,
        generator=generator,
        pin_memory=pin_memory,
        persistent_workers=False,
    )


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device``.

    Args:
        amp: "auto" (bf16 on a CUDA device that supports it, else fp16 on CUDA; off on CPU), "bf16", "fp16", "off".
            "bf16" on a CPU autocasts too: ``benchmarks/bench_train.py`` measured it 1.67x faster than fp32 on a
            2-core x86 CPU, but the numbers differ from fp32, so "auto" keeps CPUs at fp32 (bitwise resumable runs).
    Returns:
        ``torch.bfloat16``, ``torch.float16`` or None (full fp32).
    Raises:
        ValueError: unknown mode; "fp16" on a CPU device (it needs a GradScaler, which CPUs lack).
    """
    if amp not in AMP_MODES:
        raise ValueError(f"unknown amp {amp!r}; options: {list(AMP_MODES)}")
    if amp == "off":
        return None
    if device.type != "cuda":
        if amp == "auto":
            return None
        if amp == "bf16":
            return torch.bfloat16
        raise ValueError(f"amp={amp!r} needs a CUDA device; this run is on {device} (use 'bf16', 'auto' or 'off')")
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if amp == "bf16" else torch.float16


def to_device(
    batch: Mapping[str, Any], device: torch.device, channels_last: bool, key: str | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A batch's ``image`` (N, C, H, W) on ``device`` (NHWC memory with ``channels_last``) and its ``key`` target
    ("mask" or "label"; None when ``key`` is None or the batch has none)."""
    images = batch["image"].to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    target = batch[key].to(device, non_blocking=True) if key is not None and key in batch else None
    return images, target


def autocast(device: torch.device, amp_dtype: torch.dtype | None):
    """``torch.autocast`` to ``amp_dtype`` on ``device``'s type; a no-op context for None (fp32)."""
    if amp_dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)
