"""GPU readiness in one run: training, loop overhead, loader and TTA inference images/s, with the targets.

Run: ``python benchmarks/gpu_check.py [--out figures.json]`` (or ``benchmarks/gpu_check.sh``, which bounds the run
at 8 minutes). On CUDA: Unet-resnet34 at 384x576, batch 16 (the Understanding Clouds setting), ``encoder_weights``
None (no internet, no weights needed to time); ``--quick``: tiny sizes and two steps, for the tests on a CPU.

What it prints, each after warm-up steps, timed with the device synchronised (``_timing.timed``):

a. training images/s of the kit's loop (``engine.train_one_epoch``) in fp32, with bf16 autocast + channels_last
   (``amp="auto"``: bf16 where the GPU has it, else fp16 with a GradScaler; bf16 on a CPU), and that + ``compile``
   (``kitlib.runtime.compile_model``, the kit's ``compile`` / ``compile_backend`` switches). Compiling runs by
   default on CUDA; on a CPU only with ``--compile`` (inductor takes minutes there). A compile that fails or runs
   past ``--compile-timeout`` is printed and skipped; it runs after every other figure, which are written first.
b. the kit's loop against a plain PyTorch loop (below, ``plain_loop``) on the same model and initial weights, the
   same batches already on the device, the same loss, optimiser and schedule: images/s of both, the ratio
   (target >= 0.95x) and both loops' mean loss (equal when both do the same work).
c. loader-only images/s: the kit's DataLoader (``runtime.make_loader``, the dataset of ``kitlib.data.make_dataset``
   over the ``kitlib.cache`` cache, the Clouds recipe's train augmentation ``clouds_1st``) at the same size, batch
   and ``--workers`` as training, batches copied to the device, no model: target >= 2x the kit loop's images/s in b.
d. inference images/s of the kit's predict path with D4 TTA (``engine.predict(tta="d4")``, 8 views an image).

Data: the kit's synthetic demo competition (``kitlib.demo.make_demo``: the Understanding Clouds file layout, 4
classes, column-major RLE) written to a temporary folder at the Clouds image size 1400x2100 (small with
``--quick``), read with ``kitlib.formats.load_competition`` and cached with ``kitlib.cache.build_cache`` at the
training size, as ``kitlib.train`` caches. Model, loss (``clouds_1st``: BCE + Dice + the head's BCE), optimiser
(AdamW, encoder / decoder learning rates), schedule (OneCycle), AMP and channels_last come from
``kitlib.recipes.TRAIN_RECIPES["clouds"]``. ``--out FILE`` writes every figure as JSON (``kitlib.io.write_json``,
atomic), rewritten after each part so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import signal
import sys
import tempfile
import time
import traceback
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import torch
from _timing import amp_setup, kit_loop_seconds, timed
from torch.utils.data import ConcatDataset

from kitlib import engine, runtime
from kitlib.cache import build_cache
from kitlib.data import build_transforms, make_dataset, normalization_for
from kitlib.demo import make_demo
from kitlib.formats import load_competition
from kitlib.io import write_json
from kitlib.losses import create_recipe
from kitlib.models import create_model
from kitlib.optim import make_optimizer, make_scheduler
from kitlib.presets import PRESETS
from kitlib.recipes import TRAIN_RECIPES

RECIPE = TRAIN_RECIPES["clouds"]
PRESET = PRESETS["demo"]  # the files make_demo writes: the Clouds layout and 4 multilabel classes, as "clouds"
KIT_VS_PLAIN_TARGET = 0.95
LOADER_VS_TRAIN_TARGET = 2.0
SUMMARY_LABELS = (
    "train fp32",
    "train bf16 + channels_last",
    "train + compile",
    "kit loop / plain loop",
    "loader / training",
    "inference D4 TTA",
)

# (height, width, batch, steps, warm-up, source height, source width, source images) of each mode.
SETTINGS = {
    "cuda": (384, 576, 16, 30, 5, 1400, 2100, 64),
    "cpu": (128, 192, 4, 6, 2, 1400, 2100, 16),  # without --quick on a CPU: slow, but the real pipeline
    "quick": (64, 96, 2, 2, 1, 140, 210, 6),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes and 2 steps (the tests, on a CPU)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when torch sees a GPU), cuda, cuda:1, cpu")
    parser.add_argument("--steps", type=int, help="timed steps per figure (default: 30 on CUDA, 6 CPU, 2 quick)")
    parser.add_argument("--warmup", type=int, help="untimed steps before each figure (default 5 / 2 / 1)")
    parser.add_argument("--batch-size", type=int, help="images per batch (default 16 on CUDA, 4 CPU, 2 quick)")
    parser.add_argument("--size", type=int, nargs=2, metavar=("HEIGHT", "WIDTH"),
                        help="training size (default 384 576 on CUDA, 128 192 CPU, 64 96 quick)")  # fmt: skip
    parser.add_argument("--workers", type=int, help="loader workers (default: min(16, CPUs) on CUDA, 2 CPU, 0 quick)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's; 1 with --quick, where the "
                        "tests share a few cores: oversubscribed threads ran a step 10x slower)")  # fmt: skip
    parser.add_argument("--images", type=int, help="synthetic train images written (default 64 / 16 / 6)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="time torch.compile too (default: on CUDA yes, on a CPU no)")  # fmt: skip
    parser.add_argument("--compile-backend", default=None, help="the kit's compile_backend (None: inductor)")
    parser.add_argument("--compile-mode", default=None, help="the kit's compile_mode (None: torch's default)")
    parser.add_argument("--compile-timeout", type=float, default=300.0,
                        help="seconds for the compiled warm-up and timing, then skipped (default 300)")  # fmt: skip
    parser.add_argument("--cudnn-benchmark", action="store_true",
                        help="set torch.backends.cudnn.benchmark (the kit leaves it off)")  # fmt: skip
    parser.add_argument("--out", type=Path, help="write the figures as JSON here (atomic)")
    return parser.parse_args(argv)


def settings(args: argparse.Namespace, device: torch.device) -> dict:
    """The run's sizes: the mode's defaults (``SETTINGS``) overridden by the arguments given."""
    mode = "quick" if args.quick else ("cuda" if device.type == "cuda" else "cpu")
    height, width, batch, steps, warmup, src_h, src_w, n_images = SETTINGS[mode]
    if args.size:
        height, width = args.size
    default_workers = {"cuda": min(16, os.cpu_count() or 1), "cpu": 2, "quick": 0}[mode]
    s = dict(
        mode=mode, height=height, width=width, batch_size=args.batch_size or batch, steps=args.steps or steps,
        warmup=args.warmup if args.warmup is not None else warmup, source_height=src_h, source_width=src_w,
        images=args.images or n_images, workers=default_workers if args.workers is None else args.workers,
        threads=args.threads or (1 if args.quick else torch.get_num_threads()),
        arch=RECIPE["arch"], encoder_name=RECIPE["encoder_name"], augment=RECIPE["augment"], loss=RECIPE["loss"],
    )  # fmt: skip
    if s["steps"] < 1 or s["batch_size"] < 1 or s["warmup"] < 0 or s["workers"] < 0 or s["threads"] < 1:
        raise SystemExit(f"steps, batch size and threads must be >= 1, warm-up and workers >= 0: {s}")
    if s["images"] < s["batch_size"]:
        raise SystemExit(f"--images {s['images']} < --batch-size {s['batch_size']}: not one full batch")
    torch.set_num_threads(s["threads"])
    return s


class Figures(dict):
    """The figures so far; ``save`` rewrites ``--out`` atomically (``kitlib.io.write_json``) after each part."""

    def __init__(self, out: Path | None):
        super().__init__()
        self.out = out

    def save(self) -> None:
        if self.out is not None:
            write_json(self.out, dict(self))


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def header(device: torch.device) -> dict:
    """The device and versions, printed and returned; also the switches that change the figures (TF32, cuDNN
    autotuning: the kit leaves both at torch's defaults)."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({_cpu_name()})"
    info = dict(
        device=str(device), device_name=name, torch=torch.__version__, cuda=torch.version.cuda,
        cudnn=torch.backends.cudnn.version() if device.type == "cuda" else None, cpus=os.cpu_count(),
        cudnn_benchmark=torch.backends.cudnn.benchmark, cudnn_tf32=torch.backends.cudnn.allow_tf32,
        matmul_tf32=torch.backends.cuda.matmul.allow_tf32, python=sys.version.split()[0],
    )  # fmt: skip
    print(f"device {device}: {name}; torch {info['torch']}, CUDA {info['cuda']}, cuDNN {info['cudnn']}, "
          f"{info['cpus']} CPUs; cudnn.benchmark {info['cudnn_benchmark']}, TF32 conv {info['cudnn_tf32']} "
          f"matmul {info['matmul_tf32']}")  # fmt: skip
    return info


def build_data(root: Path, s: dict, device: torch.device, figures: Figures):
    """The synthetic competition, its cache at the training size and the kit's train dataset over it."""
    started = time.perf_counter()
    data_dir = make_demo(root / "data", n_train=s["images"], n_test=1, height=s["source_height"],
                         width=s["source_width"])  # fmt: skip
    df = load_competition(PRESET, data_dir)
    written = time.perf_counter() - started
    cache_s = timed(lambda: build_cache(df, PRESET, root / "cache", s["height"], s["width"],
                                        num_workers=s["workers"] or None), torch.device("cpu"))  # fmt: skip
    cache = build_cache(df, PRESET, root / "cache", s["height"], s["width"])  # current: opened, not rebuilt
    figures["cache_build_images_per_s"] = len(df) / cache_s
    print(f"data: {len(df)} synthetic {s['source_height']}x{s['source_width']} images written in {written:.1f} s; "
          f"cached at {s['height']}x{s['width']}: {figures['cache_build_images_per_s']:.1f} images/s")  # fmt: skip
    mean, std = normalization_for(s["encoder_name"], None)
    transform = build_transforms("train", s["height"], s["width"], mean, std, augment=s["augment"])
    return make_dataset(df, PRESET, transform, cache)


def loader_images_per_s(dataset, s: dict, device: torch.device) -> float:
    """Images/s of the kit's training loader, batches copied to the device, no model.

    The first ``warmup + workers`` batches (at least one) are left out of the timing: the workers start together,
    so their first batches arrive at once; the rest is the steady rate. The dataset is repeated (``ConcatDataset``)
    so that one epoch holds every batch timed: the demo has fewer images, and a new epoch would restart the workers.
    """
    skip = max(1, s["warmup"] + s["workers"])  # the first batch also waits for the loader to start
    n_batches = skip + max(s["steps"], 8 * s["workers"])
    repeats = math.ceil(n_batches * s["batch_size"] / len(dataset)) + 1
    loader = runtime.make_loader(ConcatDataset([dataset] * repeats), s["batch_size"], train=True,
                                 num_workers=s["workers"], pin_memory=device.type == "cuda")  # fmt: skip
    stamps = []
    for batch in loader:
        runtime.to_device(batch, device, False, "mask")
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        stamps.append(time.perf_counter())
        if len(stamps) == n_batches:
            break
    del loader
    return (n_batches - skip) * s["batch_size"] / (stamps[-1] - stamps[skip - 1])


def device_batches(dataset, s: dict, device: torch.device, n: int) -> list[dict]:
    """``n`` batches on the device (a few distinct ones from the kit's loader, cycled): what b and d feed both loops,
    so that neither measures the data pipeline (c does)."""
    loader = runtime.make_loader(dataset, s["batch_size"], train=True, num_workers=0, drop_last=True)
    distinct = []
    for batch in loader:
        distinct.append({"image_id": list(batch["image_id"]), "image": batch["image"].to(device),
                         "mask": batch["mask"].to(device)})  # fmt: skip
        if len(distinct) == min(n, 4):
            break
    return [distinct[i % len(distinct)] for i in range(n)]


def new_model(s: dict, device: torch.device, channels_last: bool) -> torch.nn.Module:
    """The Clouds recipe's Unet (with its classification head) from seed 0, random weights, on the device."""
    torch.manual_seed(0)
    model = create_model(RECIPE["arch"], s["encoder_name"], classes=len(PRESET.target_classes), encoder_weights=None,
                         aux_head=RECIPE["aux_head"]).to(device)  # fmt: skip
    return model.to(memory_format=torch.channels_last) if channels_last else model


def recipe_amp(device: torch.device) -> tuple[torch.dtype | None, torch.amp.GradScaler | None]:
    """The recipe's ``amp`` ("auto") as ``kitlib.engine.fit`` resolves it (``runtime.resolve_amp``: bf16, or fp16
    with a GradScaler, on CUDA; fp32 on a CPU), for b and d."""
    return amp_setup(RECIPE["amp"] if device.type == "cuda" else "off", device)


def recipe_optimizer(model: torch.nn.Module, total_steps: int):
    """The Clouds recipe's AdamW (encoder / decoder learning rates, no decay on norms) and OneCycle schedule."""
    optimizer = make_optimizer(model, RECIPE["encoder_lr"], RECIPE["decoder_lr"], RECIPE["weight_decay"])
    return optimizer, make_scheduler(optimizer, RECIPE["scheduler"], total_steps)


def plain_loop(model, batches, loss_fn, optimizer, scheduler, device, amp_dtype, scaler, channels_last) -> float:
    """The reference: a plain PyTorch training loop, written as a careful user would, for the kit's loop to match.

    It does what ``engine.train_one_epoch`` does for this recipe, no less, so the comparison is fair: the same
    model (its train mode), batches (the same list, already on the device), channels_last input copy, autocast dtype
    and GradScaler, the loss computed in float32 outside autocast from ``(mask_logits, cls_logits, masks)``, the
    same optimiser with ``zero_grad(set_to_none=True)``, the scheduler stepped after every optimiser step. What it
    leaves out is the kit's own bookkeeping: the per-batch NaN check and ``loss.item()`` (it sums the loss on the
    device and reads it once at the end), the IGNORE_INDEX check, the progress bar. Returns the mean loss.
    """
    model.train()
    total = torch.zeros((), device=device)
    for batch in batches:
        images = batch["image"].to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        masks = batch["mask"].to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            mask_logits, cls_logits = model(images)
        loss = loss_fn(mask_logits.float(), cls_logits.float(), masks)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        scheduler.step()
        total += loss.detach()
    return float(total) / len(batches)


def train_figure(s, device, batches, amp: str, channels_last: bool, compile_cfg=None) -> float:
    """Images/s of the kit's loop for one configuration (a: fp32, mixed precision + channels_last, + compile)."""
    model = new_model(s, device, channels_last)
    optimizer, _ = recipe_optimizer(model, len(batches))
    if compile_cfg is not None:  # after the optimiser's groups, as kitlib.train does
        model = runtime.compile_model(model, compile_cfg)
    loss = create_recipe(RECIPE["loss"], mode=PRESET.mask_task)
    amp_dtype, scaler = amp_setup(amp, device)
    args = (loss, optimizer, PRESET, device, amp_dtype, scaler, channels_last)
    if s["warmup"]:
        kit_loop_seconds(model, batches[: s["warmup"]], *args)
    return s["steps"] * s["batch_size"] / kit_loop_seconds(model, batches[: s["steps"]], *args)


def kit_vs_plain(s, device, batches, rounds: int = 2) -> dict:
    """b: the kit's loop and the plain loop, ``rounds`` times each in alternating order, each from the same initial
    weights with a new optimiser and schedule; the best round of each (the least disturbed by the machine). On a
    busy CPU the rounds scatter by +-30 % (a plain-vs-plain run gave 0.94x): only a GPU's ratio means something."""
    model = new_model(s, device, RECIPE["channels_last"])
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    loss_fn = create_recipe(RECIPE["loss"], mode=PRESET.mask_task)
    amp_dtype, channels_last = recipe_amp(device)[0], RECIPE["channels_last"]
    warm, timed_batches = batches[: s["warmup"]], batches[: s["steps"]]

    def kit(some, optimizer, scheduler, scaler) -> float:
        out = engine.train_one_epoch(model, some, loss_fn, optimizer, PRESET, device, scheduler=scheduler,
                                     scaler=scaler, amp_dtype=amp_dtype, channels_last=channels_last)  # fmt: skip
        return out["loss"]

    def plain(some, optimizer, scheduler, scaler) -> float:
        return plain_loop(model, some, loss_fn, optimizer, scheduler, device, amp_dtype, scaler, channels_last)

    rates, losses = {"kit": [], "plain": []}, {}
    loops = [("kit", kit), ("plain", plain)]
    for r in range(rounds):  # kit, plain, plain, kit, ...: a drift of the machine's speed favours neither
        for name, loop in loops if r % 2 == 0 else loops[::-1]:
            model.load_state_dict(initial)
            optimizer, scheduler = recipe_optimizer(model, len(warm) + len(timed_batches))
            state = (optimizer, scheduler, recipe_amp(device)[1])
            if warm:
                loop(warm, *state)
            run = partial(loop, timed_batches, *state)
            seconds = timed(lambda run=run, name=name: losses.__setitem__(name, run()), device)
            rates[name].append(len(timed_batches) * s["batch_size"] / seconds)
    kit_best, plain_best = max(rates["kit"]), max(rates["plain"])
    return {"kit_loop_images_per_s": kit_best, "plain_loop_images_per_s": plain_best,
            "kit_vs_plain": kit_best / plain_best, "kit_loop_rounds": rates["kit"], "plain_loop_rounds": rates["plain"],
            "kit_loop_mean_loss": losses["kit"], "plain_loop_mean_loss": losses["plain"], "model": model}  # fmt: skip


def inference_images_per_s(model, s, device, batches) -> float:
    """d: images/s of ``engine.predict`` with D4 TTA (8 views an image), the recipe's AMP and channels_last."""
    amp_dtype = recipe_amp(device)[0]

    def run(some):
        for _ in engine.predict(model, some, device, PRESET.activation, amp_dtype=amp_dtype,
                                channels_last=RECIPE["channels_last"], tta="d4"):  # fmt: skip
            pass

    if s["warmup"]:
        run(batches[: s["warmup"]])
    return s["steps"] * s["batch_size"] / timed(lambda: run(batches[: s["steps"]]), device)


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise TimeoutError in the main thread after ``seconds`` (SIGALRM, POSIX; no limit elsewhere): a compile
    that hangs or takes too long is skipped instead of eating the run's time."""
    if not hasattr(signal, "SIGALRM") or seconds <= 0:
        yield
        return

    def expire(signum, frame):
        raise TimeoutError(f"took more than {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def compile_figure(args, s, device, batches, figures: Figures) -> None:
    """a, compiled: skipped with the reason on a CPU without ``--compile``; a failure or a timeout is printed."""
    run = args.compile if args.compile is not None else device.type == "cuda"
    figures["train_compile_images_per_s"], figures["compile_skipped"] = None, None
    if not run:
        figures["compile_skipped"] = "on a CPU compile runs only with --compile (inductor takes minutes there)"
        print(f"train + compile: skipped ({figures['compile_skipped']})")
        return
    cfg = SimpleNamespace(compile=True, compile_mode=args.compile_mode, compile_backend=args.compile_backend)
    backend = args.compile_backend or "inductor"
    started = time.perf_counter()
    try:
        with time_limit(args.compile_timeout):
            value = train_figure(s, device, batches, RECIPE["amp"], RECIPE["channels_last"], compile_cfg=cfg)
    except Exception as e:  # a compile that fails (or times out) must not lose the other figures
        figures["compile_skipped"] = f"{backend} failed after {time.perf_counter() - started:.0f} s: " + (
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        )  # fmt: skip
        traceback.print_exc(limit=3)
        print(f"train + compile: skipped ({figures['compile_skipped']})")
        return
    figures["train_compile_images_per_s"] = value
    figures["compile_backend"] = backend
    print(f"train bf16 + channels_last + compile ({backend}): {value:8.1f} images/s "
          f"(compile and warm-up {time.perf_counter() - started:.0f} s in all)")  # fmt: skip


def met(ratio: float, target: float) -> str:
    return "met" if ratio >= target else "not met"


def summary(figures: Figures) -> None:
    f = figures
    fp32, fast, compiled = f["train_fp32_images_per_s"], f["train_amp_cl_images_per_s"], f["train_compile_images_per_s"]
    compile_line = (f"{compiled:8.1f} images/s ({compiled / fp32:.2f}x fp32, {compiled / fast:.2f}x uncompiled)"
                    if compiled else f"skipped: {f['compile_skipped']}")  # fmt: skip
    rows = [
        f"{fp32:8.1f} images/s",
        f"{fast:8.1f} images/s ({fast / fp32:.2f}x fp32; autocast {f['amp_dtype']})",
        compile_line,
        f"{f['kit_vs_plain']:.3f}x ({f['kit_loop_images_per_s']:.1f} vs {f['plain_loop_images_per_s']:.1f} images/s; "
        f"target >= {KIT_VS_PLAIN_TARGET}x): {met(f['kit_vs_plain'], KIT_VS_PLAIN_TARGET)}",
        f"{f['loader_vs_train']:.2f}x ({f['loader_images_per_s']:.1f} vs {f['kit_loop_images_per_s']:.1f} images/s, "
        f"{f['settings']['workers']} workers; target >= {LOADER_VS_TRAIN_TARGET}x): "
        f"{met(f['loader_vs_train'], LOADER_VS_TRAIN_TARGET)}",
        f"{f['inference_d4_images_per_s']:8.1f} images/s ({8 * f['inference_d4_images_per_s']:.1f} views/s)",
    ]
    s = f["settings"]
    print(f"\n== summary: {f['device_name']}, {s['arch']}-{s['encoder_name']} {s['height']}x{s['width']} batch "
          f"{s['batch_size']}, {s['steps']} timed steps, {f['wall_s']:.0f} s in all ==")  # fmt: skip
    for label, row in zip(SUMMARY_LABELS, rows, strict=True):
        print(f"{label + ':':30s} {row}")
    if f["device"] == "cpu":
        print("(a CPU run: it checks the script; the figures and targets are meant for a GPU)")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    device = runtime.resolve_device(args.device)
    if args.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    figures = Figures(args.out)
    figures.update(header(device))
    s = settings(args, device)
    figures["settings"], figures["part_s"] = s, {}
    print(f"{s['arch']}-{s['encoder_name']} (random init), {s['height']}x{s['width']}, batch {s['batch_size']}, "
          f"{s['warmup']} warm-up + {s['steps']} timed steps, {s['workers']} loader workers, {s['threads']} torch "
          f"threads, augment "
          f"{s['augment']!r}, loss {s['loss']!r}")  # fmt: skip

    def part(name: str, since: float) -> float:  # the wall time of each part, to plan within a GPU session
        now = time.perf_counter()
        figures["part_s"][name] = round(now - since, 2)
        figures.save()
        return now

    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        dataset = build_data(Path(tmp), s, device, figures)
        mark = part("data", started)
        figures["loader_images_per_s"] = loader_images_per_s(dataset, s, device)
        print(f"loader only ({s['workers']} workers, to the device): {figures['loader_images_per_s']:8.1f} images/s")
        batches = device_batches(dataset, s, device, max(s["steps"], s["warmup"]))
        mark = part("loader", mark)
    figures["amp_dtype"] = str(amp_setup(RECIPE["amp"], device)[0]).replace("torch.", "")
    figures["train_fp32_images_per_s"] = train_figure(s, device, batches, "off", False)
    print(f"train fp32, NCHW:                 {figures['train_fp32_images_per_s']:8.1f} images/s")
    figures["train_amp_cl_images_per_s"] = train_figure(s, device, batches, RECIPE["amp"], RECIPE["channels_last"])
    print(
        f"train {figures['amp_dtype']} autocast + channels_last: {figures['train_amp_cl_images_per_s']:8.1f} images/s"
    )
    mark = part("train", mark)
    b = kit_vs_plain(s, device, batches, rounds=2 if args.quick else 4)
    model = b.pop("model")
    figures.update(b)
    figures["kit_vs_plain_met"] = figures["kit_vs_plain"] >= KIT_VS_PLAIN_TARGET
    figures["loader_vs_train"] = figures["loader_images_per_s"] / figures["kit_loop_images_per_s"]
    figures["loader_vs_train_met"] = figures["loader_vs_train"] >= LOADER_VS_TRAIN_TARGET
    print(f"kit loop {b['kit_loop_images_per_s']:8.1f} images/s, plain loop {b['plain_loop_images_per_s']:8.1f} "
          f"images/s ({figures['amp_dtype'] if recipe_amp(device)[0] else 'fp32'}): {b['kit_vs_plain']:.3f}x (mean "
          f"loss {b['kit_loop_mean_loss']:.6f} vs {b['plain_loop_mean_loss']:.6f})")  # fmt: skip
    mark = part("kit_vs_plain", mark)
    figures["inference_d4_images_per_s"] = inference_images_per_s(model, s, device, batches)
    print(f"inference, D4 TTA (8 views):      {figures['inference_d4_images_per_s']:8.1f} images/s")
    mark = part("inference", mark)
    del model
    compile_figure(args, s, device, batches, figures)
    part("compile", mark)
    figures["wall_s"] = time.perf_counter() - started
    figures.save()
    summary(figures)


if __name__ == "__main__":
    main()
