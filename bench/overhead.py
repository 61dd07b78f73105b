"""Engine overhead: the same VAE and GAN trained by a hand-written PyTorch loop, by the engine, by Lightning.

Issue: "Performance: the engine costs nothing over a hand-written loop". Per model
(``vae``, ``gan``; nets built through the model registry, so all three sides train
the very same modules from the same initial weights) this script reports:

1. **identity** -- each side trains ``--check-epochs`` epochs with every logged loss
   recorded; the raw loop and Lightning reproduce the engine's split permutation,
   per-epoch data order and per-step noise, so the losses must agree exactly
   (max abs difference 0.0) at every step.
2. **step time** -- ``--reps`` rounds; each round runs every variant once, in an
   order rotated from round to round (A/B/C interleaving), each run ``--epochs``
   epochs of which the first ``--warmup`` are excluded. Per-step time of a run is
   the median timed epoch divided by the steps per epoch; the table shows medians
   over rounds and the ratios are medians of the per-round ratios (each ratio pairs
   runs taken seconds apart, so slow drifts in machine load cancel out).
3. **work counts** -- aten ops (``torch.profiler``) and Python calls (``sys.setprofile``)
   per step over a whole epoch of each side's real loop: deterministic, so they show
   what the engine adds even when the machine is too busy to time it.
4. **hooks** -- the trainer hooks the loop fires per step, with the default
   built-in plugins loaded, timed in isolation and divided by the engine's step time.
5. **toolkit** -- what ``trainer.ema_decay=0.999`` adds per epoch against the plain engine,
   and what ``callbacks.sample_metrics`` (all four figures of 1,000 samples, every epoch)
   adds against the same run with only its validation pass; interleaved rounds, per-epoch
   wall and thread-CPU seconds, medians of per-round differences and ratios
   (``--toolkit-only`` runs just this, ``--no-toolkit`` skips it).

Every side holds the same uint8 images in memory and converts each batch to float
(as the engine's loader does) and calls the model's own ``training_step``, so what
differs is the loop. Timed runs carry no instrumentation but an epoch timestamp (a plugin on the engine's
epoch hooks, a Callback in Lightning, ``perf_counter`` in the raw loop); losses are
recorded only in the separate identity runs.

Usage::

    python bench/overhead.py                                   # CPU, fp32, MLP nets, MNIST
    python bench/overhead.py --quick                           # a fast smoke run
    python bench/overhead.py --device cuda --precision bf16 --arch conv   # GPU: conv VAE, DCGAN

All three sides use the same device placement and, with ``--precision bf16``, the same
``torch.autocast`` (Lightning: ``precision="bf16-mixed"``).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import engine  # noqa: E402
from engine.config import resolve  # noqa: E402
from engine.data import ImageData, load_data  # noqa: E402
from engine.plugins import PluginManager, load_plugins  # noqa: E402
from engine.testing import plugin_manager  # noqa: E402

MNIST_ROOT = Path("/work/shared/data/mnist")
CALLBACK_PLUGINS = ("progress", "csv_logger", "tensorboard", "sample_grids", "early_stopping", "plots")
"""The built-in trainer plugins (entry points of the gentrain distribution)."""


# ---------------------------------------------------------------------------
# settings shared by every benchmark script
# ---------------------------------------------------------------------------


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def add_common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--precision", choices=["32", "bf16"], default="32", help="bf16: autocast on every side")
    p.add_argument("--arch", choices=["mlp", "conv"], default="mlp", help="conv: conv VAE and DCGAN")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--limit", type=int, default=9000, help="images of the MNIST test set to train on")
    p.add_argument("--threads", type=int, default=default_threads(), help="torch.set_num_threads, every side")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")


def data_section(limit: int) -> tuple[dict[str, Any], str]:
    """The ``data`` config section: MNIST test images if present, else procedural shapes of side 28."""
    if (MNIST_ROOT / "t10k-images-idx3-ubyte.gz").exists() or (MNIST_ROOT / "t10k-images-idx3-ubyte").exists():
        return {
            "name": "mnist",
            "root": str(MNIST_ROOT),
            "split": "test",
            "limit": limit,
        }, f"MNIST test, {limit} images"
    note = f"shapes, size 28, {limit} images (FALLBACK: no MNIST files under {MNIST_ROOT})"
    return {"name": "shapes", "n": limit, "size": 28}, note


def model_section(name: str, arch: str) -> dict[str, Any]:
    """Default model configs; ``conv`` picks the conv VAE and the DCGAN."""
    if arch == "mlp":
        return {"name": name}
    return {"name": name, "arch": "conv" if name == "vae" else "dcgan"}


def run_config(
    name: str,
    args: argparse.Namespace,
    epochs: int,
    out_dir: str,
    tag: str,
    loader: str = "memory",
    overrides: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The engine config of one benchmark run: in-process, no validation, callbacks off; ``overrides`` by section."""
    data, _ = data_section(args.limit)
    config: dict[str, Any] = {
        "model": model_section(name, args.arch),
        "data": {**data, "val_fraction": 0.0, "loader": loader},
        "trainer": {
            "epochs": epochs,
            "batch_size": args.batch,
            "seed": args.seed,
            "num_threads": args.threads,
            "precision": args.precision,
            "checkpoint_every": 1_000_000,  # only the final checkpoint, written after the last timed epoch
        },
        "scaling": {"num_workers": 0, "use_gpu": args.device == "cuda"},
        "run": {"name": tag, "output_dir": out_dir, "resume": "never"},
        "callbacks": {"progress": False, "csv": False, "tensorboard": False, "sample_every": 0},
    }
    for section, values in (overrides or {}).items():
        config[section] = {**config[section], **values}
    return config


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def environment() -> dict[str, str]:
    import ray

    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        from importlib.metadata import version

        gentrain = version("gentrain")
    except Exception:
        gentrain = "unknown"
    try:
        import lightning

        lightning_version = lightning.__version__
    except ImportError:
        lightning_version = "not installed"
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "host": platform.node(),
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ray": ray.__version__,
        "gentrain": gentrain,
        "lightning": lightning_version,
        "cuda": torch.version.cuda or "none",
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
    }


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


class WorkCounter:
    """Counts the work of one epoch: aten ops (``torch.profiler``) and Python calls (``sys.setprofile``).

    Deterministic, unlike times: per step, it shows exactly what a loop adds.
    """

    EPOCH = 1  # count the second epoch: no first-step initialisation (Adam state, caches)

    def __init__(self) -> None:
        self.aten = 0
        self.python_calls = 0
        self.top: dict[str, int] = {}
        self._prof: Any = None

    def _count(self, frame: Any, event: str, arg: Any) -> None:
        if event in ("call", "c_call"):
            self.python_calls += 1

    def start(self) -> None:
        self._prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
        self._prof.__enter__()
        sys.setprofile(self._count)

    def stop(self) -> None:
        sys.setprofile(None)
        self._prof.__exit__(None, None, None)
        events = [e for e in self._prof.events() if e.name.startswith("aten::")]
        self.aten = len(events)
        top: dict[str, int] = {}
        for e in events:
            if not _inside_aten_op(e):
                top[e.name] = top.get(e.name, 0) + 1
        self.top = top


def _inside_aten_op(event: Any) -> bool:
    """Whether a profiler event runs inside another aten op (user ranges, e.g. Lightning's, do not count)."""
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("aten::"):
            return True
        parent = parent.cpu_parent
    return False


# ---------------------------------------------------------------------------
# the raw loop's own reimplementation of the engine's determinism contract
# ---------------------------------------------------------------------------


class StepNoise:
    """Noise as the engine draws it: one generator per step, seeded ``seed * 1_000_003 + step``.

    Installed as ``model._noise``, which is what ``Model.batch_randn`` draws from
    during training; one process, so no slicing by rank.
    """

    def __init__(self, seed: int) -> None:
        self.gen = torch.Generator()
        self.seed = seed

    def reseed(self, step: int) -> None:
        self.gen.manual_seed((self.seed * 1_000_003 + step) % (2**63))

    def randn(self, n: int, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        return torch.randn(n, *shape, generator=self.gen).to(device, non_blocking=True)

    def rand(self, n: int, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        return torch.rand(n, *shape, generator=self.gen).to(device, non_blocking=True)


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The engine's data order of ``epoch``: ``randperm`` from a generator seeded ``seed * 100_003 + epoch``."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


@dataclass
class Setup:
    """What every side shares: the model class and config, the training images, the optimizer settings."""

    name: str
    pm: PluginManager
    config: Any  # RunConfig
    images: torch.Tensor  # uint8 N×C×H×W, already in the engine's split order
    labels: torch.Tensor
    spec: engine.DataSpec
    device: torch.device
    data_note: str

    def build(self, seed: int) -> engine.Model:
        """The model as the engine builds it: global RNG seeded with ``seed``, then the registry's class."""
        seed_all(seed)
        entry = self.pm.models.get(self.config.model.name)
        with engine.plugins.using(self.pm):
            model: engine.Model = entry.obj(self.config.model.params, self.spec)
        return model.to(self.device)

    def adam(self, params: Iterator[torch.nn.Parameter], name: str) -> torch.optim.Optimizer:
        o = self.config.optim.for_optimizer(name)
        ps = [p for p in params if p.requires_grad]
        return torch.optim.Adam(ps, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)


def make_setup(name: str, args: argparse.Namespace, pm: PluginManager | None = None) -> Setup:
    pm = pm or load_plugins(autoload=False, blocked=CALLBACK_PLUGINS)
    cfg = resolve(run_config(name, args, 1, "unused", "unused"), pm)
    assert cfg.optim.algo == "adam"
    dataset: ImageData = load_data(cfg.data, pm)
    # The engine's train/validation split: with val_fraction=0, the whole set in split-permutation order.
    perm = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(cfg.data.split_seed))
    device = torch.device(args.device)
    images, labels = dataset.images[perm], dataset.labels[perm]
    if device.type == "cuda":  # as the engine's MemoryLoader: pinned host memory, a copy per batch
        images, labels = images.pin_memory(), labels.pin_memory()
    _, note = data_section(args.limit)
    return Setup(name, pm, cfg, images, labels, dataset.spec, device, note)


@dataclass
class Run:
    """One training run: wall time of each epoch, steps per epoch, and (identity runs) every step's losses."""

    epoch_s: list[float]
    epoch_cpu_s: list[float]
    steps_per_epoch: int
    losses: list[dict[str, float]] = field(default_factory=list)

    def step_s(self, warmup: int) -> float:
        """Wall seconds per step: the median timed epoch over the steps per epoch."""
        timed = self.epoch_s[warmup:] or self.epoch_s
        return median(timed) / self.steps_per_epoch

    def step_cpu_s(self, warmup: int) -> float:
        """The same in CPU seconds of the training thread (blind to time spent preempted)."""
        timed = self.epoch_cpu_s[warmup:] or self.epoch_cpu_s
        return median(timed) / self.steps_per_epoch


def _floats(d: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: float(v) for k, v in d.items()}


# ---------------------------------------------------------------------------
# side A: the hand-written loop
# ---------------------------------------------------------------------------


def train_raw(
    s: Setup, args: argparse.Namespace, epochs: int, record: bool = False, counter: WorkCounter | None = None
) -> Run:
    """A plain PyTorch loop: zero_grad, forward, backward, step. Nothing else."""
    torch.set_num_threads(args.threads)
    seed = args.seed
    model = s.build(seed)
    gan = s.name == "gan"
    if gan:
        assert model.config.n_critic == 1, "the hand-written GAN loop does one disc update per step"
        opt_d = s.adam(model.disc.parameters(), "disc")
        opt_g = s.adam(model.gen.parameters(), "gen")
    else:
        opt = s.adam(model.parameters(), "train")
    seed_all(seed)  # the engine re-seeds the global RNG after building (rank 0: seed + 0)
    noise = StepNoise(seed)
    model._noise = noise  # what batch_randn draws from
    model.train()
    device, amp = s.device, autocast(s.device, args.precision)
    images, labels, batch = s.images, s.labels, args.batch
    n = len(images)
    steps = n // batch
    rec: list[dict[str, torch.Tensor]] = []
    times, cpu = [], []
    step = 0
    for epoch in range(epochs):
        sync(device)
        if counter and epoch == counter.EPOCH:
            counter.start()
        t0, c0 = time.perf_counter(), time.thread_time()
        order = epoch_order(n, seed, epoch)
        for b in range(steps):
            sel = order[b * batch : (b + 1) * batch]
            x = images[sel].float().div_(255.0).to(device, non_blocking=True)
            y = labels[sel].to(device, non_blocking=True)
            noise.reseed(step)
            if gan:
                opt_d.zero_grad(set_to_none=True)
                with amp:
                    d = model.training_step((x, y), "disc")
                d["loss"].backward()
                opt_d.step()
                opt_g.zero_grad(set_to_none=True)
                with amp:
                    g = model.training_step((x, y), "gen")
                g["loss"].backward()
                opt_g.step()
                if record:
                    rec.append(
                        {**{f"disc/{k}": v.detach().float() for k, v in d.items()}}
                        | {f"gen/{k}": v.detach().float() for k, v in g.items()}
                    )
            else:
                opt.zero_grad(set_to_none=True)
                with amp:
                    out = model.training_step((x, y), "train")
                out["loss"].backward()
                opt.step()
                if record:
                    rec.append({k: v.detach().float() for k, v in out.items()})
            step += 1
        sync(device)
        times.append(time.perf_counter() - t0)
        cpu.append(time.thread_time() - c0)
        if counter and epoch == counter.EPOCH:
            counter.stop()
    return Run(times, cpu, steps, [_floats(r) for r in rec])


# ---------------------------------------------------------------------------
# side B: the engine, in-process
# ---------------------------------------------------------------------------


class EpochTimer:
    """A trainer plugin: wall time of each training epoch; keeps the trainer for the hook benchmark."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.epoch_s: list[float] = []
        self.epoch_cpu_s: list[float] = []
        self.trainer: Any = None
        self._t0 = self._c0 = 0.0

    @engine.hookimpl
    def gentrain_on_fit_start(self, trainer: Any) -> None:
        self.trainer = trainer

    @engine.hookimpl
    def gentrain_on_train_epoch_start(self, epoch: int) -> None:
        sync(self.device)
        self._t0, self._c0 = time.perf_counter(), time.thread_time()

    @engine.hookimpl
    def gentrain_on_train_epoch_end(self, epoch: int) -> None:
        sync(self.device)
        self.epoch_s.append(time.perf_counter() - self._t0)
        self.epoch_cpu_s.append(time.thread_time() - self._c0)


class CountingTimer(EpochTimer):
    """The timer plus a :class:`WorkCounter` over one epoch (between the same two hooks)."""

    def __init__(self, device: torch.device, counter: WorkCounter) -> None:
        super().__init__(device)
        self.counter = counter

    @engine.hookimpl
    def gentrain_on_train_epoch_start(self, epoch: int) -> None:
        if epoch == self.counter.EPOCH:
            self.counter.start()
        super().gentrain_on_train_epoch_start(epoch)

    @engine.hookimpl
    def gentrain_on_train_epoch_end(self, epoch: int) -> None:
        super().gentrain_on_train_epoch_end(epoch)
        if epoch == self.counter.EPOCH:
            self.counter.stop()


class LossRecorder(EpochTimer):
    """The timer plus every step's losses (identity runs only: one more per-step hook implementation)."""

    def __init__(self, device: torch.device) -> None:
        super().__init__(device)
        self.losses: list[dict[str, torch.Tensor]] = []

    @engine.hookimpl
    def gentrain_on_train_batch_end(self, losses: dict[str, torch.Tensor]) -> None:
        self.losses.append(dict(losses))


def train_engine(
    s: Setup,
    args: argparse.Namespace,
    epochs: int,
    record: bool = False,
    blocked: tuple[str, ...] = (),
    loader: str = "memory",
    keep: dict[str, Any] | None = None,
    counter: WorkCounter | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> Run:
    """``engine.fit`` in this process with the default built-in plugins (minus ``blocked``) and a timer."""
    timer: EpochTimer
    if counter is not None:
        timer = CountingTimer(s.device, counter)
    else:
        timer = LossRecorder(s.device) if record else EpochTimer(s.device)
    with tempfile.TemporaryDirectory(prefix="gentrain-bench-") as out, plugin_manager(timer, blocked=blocked) as pm:
        engine.fit(run_config(s.name, args, epochs, out, f"{s.name}-engine", loader, overrides), plugins=pm)
        if keep is not None:
            keep["trainer"] = timer.trainer
    val_fraction = float((overrides or {}).get("data", {}).get("val_fraction", 0.0))
    steps = (len(s.images) - round(len(s.images) * val_fraction)) // args.batch
    losses = [_floats(r) for r in timer.losses] if isinstance(timer, LossRecorder) else []
    return Run(timer.epoch_s, timer.epoch_cpu_s, steps, losses)


# ---------------------------------------------------------------------------
# side C: PyTorch Lightning
# ---------------------------------------------------------------------------


def lightning_available() -> bool:
    try:
        import lightning  # noqa: F401
    except ImportError:
        return False
    return True


def train_lightning(
    s: Setup, args: argparse.Namespace, epochs: int, record: bool = False, counter: WorkCounter | None = None
) -> Run:
    """``lightning.Trainer.fit`` on the same model, data order and noise; logging, checkpoints, bars off."""
    import lightning as L
    from torch.utils.data import DataLoader, Dataset

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"lightning(\..*)?")

    class Batches(Dataset[tuple[torch.Tensor, torch.Tensor]]):
        """Indexed by a whole batch of indices: one gather per batch, no per-sample Python."""

        def __len__(self) -> int:
            return len(s.images)

        def __getitem__(self, sel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return s.images[sel].float().div_(255.0), s.labels[sel]

    class EngineOrder(torch.utils.data.Sampler[torch.Tensor]):
        """Yields index batches in the engine's order; Lightning calls ``set_epoch`` every epoch."""

        def __init__(self) -> None:
            self.epoch = 0

        def set_epoch(self, epoch: int) -> None:
            self.epoch = epoch

        def __len__(self) -> int:
            return len(s.images) // args.batch

        def __iter__(self) -> Iterator[torch.Tensor]:
            order = epoch_order(len(s.images), args.seed, self.epoch)
            for b in range(len(self)):
                yield order[b * args.batch : (b + 1) * args.batch]

    gan = s.name == "gan"

    class Lit(L.LightningModule):
        def __init__(self, model: engine.Model) -> None:
            super().__init__()
            self.net = model
            self.noise = StepNoise(args.seed)
            model._noise = self.noise
            self.step_no = 0
            self.rec: list[dict[str, torch.Tensor]] = []
            self.automatic_optimization = not gan

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            self.noise.reseed(self.step_no)
            self.step_no += 1
            if not gan:
                out = self.net.training_step(batch, "train")
                if record:
                    self.rec.append({k: v.detach().float() for k, v in out.items()})
                return out["loss"]
            opt_d, opt_g = self.optimizers()  # type: ignore[misc]
            opt_d.zero_grad()
            d = self.net.training_step(batch, "disc")
            self.manual_backward(d["loss"])
            opt_d.step()
            opt_g.zero_grad()
            g = self.net.training_step(batch, "gen")
            self.manual_backward(g["loss"])
            opt_g.step()
            if record:
                self.rec.append(
                    {f"disc/{k}": v.detach().float() for k, v in d.items()}
                    | {f"gen/{k}": v.detach().float() for k, v in g.items()}
                )
            return None

        def configure_optimizers(self) -> Any:
            if gan:
                return [s.adam(self.net.disc.parameters(), "disc"), s.adam(self.net.gen.parameters(), "gen")]
            return s.adam(self.net.parameters(), "train")

    class Timer(L.Callback):
        def __init__(self) -> None:
            self.epoch_s: list[float] = []
            self.epoch_cpu_s: list[float] = []
            self._t0 = self._c0 = 0.0

        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            if counter and trainer.current_epoch == counter.EPOCH:
                counter.start()
            sync(s.device)
            self._t0, self._c0 = time.perf_counter(), time.thread_time()

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            sync(s.device)
            self.epoch_s.append(time.perf_counter() - self._t0)
            self.epoch_cpu_s.append(time.thread_time() - self._c0)
            if counter and trainer.current_epoch == counter.EPOCH:
                counter.stop()

    torch.set_num_threads(args.threads)
    model = s.build(args.seed)
    seed_all(args.seed)
    lit = Lit(model)
    loader = DataLoader(Batches(), sampler=EngineOrder(), batch_size=None)
    timer = Timer()
    with tempfile.TemporaryDirectory(prefix="gentrain-bench-pl-") as out:
        trainer = L.Trainer(
            accelerator="gpu" if s.device.type == "cuda" else "cpu",
            devices=1,
            max_epochs=epochs,
            precision="bf16-mixed" if args.precision == "bf16" else "32-true",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            use_distributed_sampler=False,
            default_root_dir=out,
            callbacks=[timer],
        )
        trainer.fit(lit, train_dataloaders=loader)
    return Run(timer.epoch_s, timer.epoch_cpu_s, len(s.images) // args.batch, [_floats(r) for r in lit.rec])


# ---------------------------------------------------------------------------
# identity, timing, hooks
# ---------------------------------------------------------------------------

TRAINERS: dict[str, Callable[..., Run]] = {"raw": train_raw, "engine": train_engine, "lightning": train_lightning}


def max_abs_diff(a: list[dict[str, float]], b: list[dict[str, float]]) -> tuple[float, int, str]:
    """Max abs difference over every step and loss key; (inf, ...) when steps or keys differ."""
    if len(a) != len(b):
        return float("inf"), min(len(a), len(b)), f"step counts differ: {len(a)} vs {len(b)}"
    worst = 0.0
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        if x.keys() != y.keys():
            return float("inf"), i, f"loss keys differ at step {i}: {sorted(x)} vs {sorted(y)}"
        for k in x:
            worst = max(worst, abs(x[k] - y[k]))
    return worst, len(a), ""


def identity(s: Setup, args: argparse.Namespace, sides: list[str]) -> dict[str, Any]:
    runs = {side: TRAINERS[side](s, args, args.check_epochs, record=True) for side in sides}
    ref = runs["engine"].losses
    out: dict[str, Any] = {"steps": len(ref), "keys": sorted(ref[0]) if ref else []}
    for side in sides:
        if side != "engine":
            diff, steps, why = max_abs_diff(ref, runs[side].losses)
            out[side] = {"max_abs_diff": diff, "steps": steps, "problem": why}
    return out


def work_counts(s: Setup, args: argparse.Namespace, sides: list[str]) -> dict[str, Any]:
    """Per-step aten ops and Python calls of each side, over its whole second epoch (data loading included)."""
    steps = len(s.images) // args.batch
    out: dict[str, Any] = {}
    for side in sides:
        c = WorkCounter()
        TRAINERS[side](s, args, WorkCounter.EPOCH + 1, counter=c)
        out[side] = {
            "aten_per_step": c.aten / steps,
            "top_level_aten_per_step": sum(c.top.values()) / steps,
            "python_calls_per_step": c.python_calls / steps,
            "top_level": {k: v / steps for k, v in sorted(c.top.items())},
        }
    raw = out["raw"]["top_level"]
    eng = out["engine"]["top_level"]
    extra = {k: eng.get(k, 0) - raw.get(k, 0) for k in sorted(set(raw) | set(eng))}
    out["engine_minus_raw_top_level"] = {k: v for k, v in extra.items() if abs(v) > 1e-9}
    return out


def timing(s: Setup, args: argparse.Namespace, variants: dict[str, Callable[[], Run]]) -> dict[str, Any]:
    """Rounds of every variant in rotated order; per-step wall and thread-CPU seconds of each run."""
    names = list(variants)
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.reps):
        k = r % len(names)
        order = names[k:] + names[:k]
        for n in order:
            gc.collect()
            run = variants[n]()
            wall[n].append(run.step_s(args.warmup))
            cpu[n].append(run.step_cpu_s(args.warmup))
        line = "  ".join(f"{n}={wall[n][-1] * 1e3:.3f}/{cpu[n][-1] * 1e3:.3f}" for n in names)
        print(f"    round {r + 1}/{args.reps} ({' > '.join(order)}) ms/step wall/cpu: {line}", flush=True)
    return {"wall_step_s": wall, "cpu_step_s": cpu, "steps_per_epoch": len(s.images) // args.batch}


def paired_ratio(per: dict[str, list[float]], num: str, den: str) -> float:
    """Median over rounds of ``num / den`` within each round."""
    return median([a / b for a, b in zip(per[num], per[den], strict=True)])


def hook_cost(trainer: Any, phases: list[engine.Phase], batch: Any, losses: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Seconds per step of the hook calls ``train_step`` makes, each called as the loop calls it.

    Per step: ``gentrain_on_train_batch_start`` once, ``gentrain_on_before_optimizer_step``
    once per phase repeat, ``gentrain_on_train_batch_end`` once; ``step`` cycles
    through an epoch's values so the progress plugin's every-10-steps branch is
    exercised as in training. An empty loop's time is subtracted.
    """
    opt = next(iter(trainer.optimizers.values()))
    updates = [p.name for p in phases for _ in range(p.repeats)]
    fire = trainer.fire
    n = 20_000

    def calls() -> float:
        t0 = time.perf_counter()
        for i in range(n):
            step = i % 70
            fire("gentrain_on_train_batch_start", step=step, batch=batch)
            for name in updates:
                fire("gentrain_on_before_optimizer_step", phase=name, optimizer=opt)
            fire("gentrain_on_train_batch_end", step=step, losses=losses)
        return time.perf_counter() - t0

    def empty() -> float:
        t0 = time.perf_counter()
        for i in range(n):
            step = i % 70
            for _ in updates:
                pass
            del step
        return time.perf_counter() - t0

    per_call = {}
    for name, kwargs in (
        ("gentrain_on_train_batch_start", {"step": 1, "batch": batch}),
        ("gentrain_on_before_optimizer_step", {"phase": updates[0], "optimizer": opt}),
        ("gentrain_on_train_batch_end", {"step": 1, "losses": losses}),
    ):
        samples = []
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(n):
                fire(name, **kwargs)
            samples.append((time.perf_counter() - t0) / n)
        impls = [i.plugin_name for i in getattr(trainer.plugins.hook, name).get_hookimpls()]
        per_call[name] = {"s": median(samples), "impls": impls}
    total = median([calls() - empty() for _ in range(7)]) / n
    return {"per_step_s": total, "calls_per_step": 2 + len(updates), "per_call": per_call}


def checks(s: Setup, args: argparse.Namespace, sides: list[str], res: dict[str, Any]) -> None:
    """Loss identity and work counts: deterministic, so skipped by --timing-only runs."""
    ident = identity(s, args, sides)
    res["identity"] = ident
    print(f"  identity over {ident['steps']} steps ({args.check_epochs} epochs), keys {ident['keys']}:")
    for side in sides:
        if side != "engine":
            d = ident[side]
            extra = f"  ({d['problem']})" if d["problem"] else ""
            print(f"    engine vs {side:<9} max abs loss difference = {d['max_abs_diff']!r}{extra}")

    counts = work_counts(s, args, sides)
    res["counts"] = counts
    print("  work per step, counted over a whole epoch (deterministic):")
    print(f"    {'side':<10} {'aten ops':>9} {'top-level':>10} {'Python calls':>13}")
    for side in sides:
        c = counts[side]
        print(
            f"    {side:<10} {c['aten_per_step']:>9.1f} {c['top_level_aten_per_step']:>10.1f}"
            f" {c['python_calls_per_step']:>13.1f}"
        )
    extra = ", ".join(f"{k.removeprefix('aten::')} {v:+.2f}" for k, v in counts["engine_minus_raw_top_level"].items())
    print(f"    engine - raw, top-level aten ops per step: {extra or 'none'}")


def bench_model(name: str, args: argparse.Namespace, results: dict[str, Any]) -> None:
    s = make_setup(name, args)
    sides = ["raw", "engine"] + (["lightning"] if args.lightning else [])
    arch = s.config.model.params.arch
    print(f"\n== {name} ({arch}), {s.data_note}, batch {args.batch}, {len(s.images) // args.batch} steps/epoch ==")
    res: dict[str, Any] = {"arch": arch}

    if not args.timing_only:
        checks(s, args, sides, res)

    variants: dict[str, Callable[[], Run]] = {
        side: (lambda side=side: TRAINERS[side](s, args, args.epochs)) for side in sides
    }
    if name == "vae" and not args.no_bare:
        variants["engine-bare"] = lambda: train_engine(s, args, args.epochs, blocked=CALLBACK_PLUGINS)
    print(f"  timing: {args.reps} rounds x {len(variants)} variants, {args.epochs} epochs each, ", end="")
    print(f"first {args.warmup} excluded")
    t = timing(s, args, variants)
    res["timing"] = t
    pairs = [("engine", "raw"), ("lightning", "engine"), ("lightning", "raw"), ("engine", "engine-bare")]
    for kind in ("wall", "cpu"):
        per = t[f"{kind}_step_s"]
        res[f"median_{kind}_step_s"] = {n: median(v) for n, v in per.items()}
        res[f"{kind}_ratios"] = {f"{a}/{b}": paired_ratio(per, a, b) for a, b in pairs if a in per and b in per}
        res[f"{kind}_engine_minus_raw_us"] = median(
            [(e - r) * 1e6 for e, r in zip(per["engine"], per["raw"], strict=True)]
        )
    wall, cpu = t["wall_step_s"], t["cpu_step_s"]
    print(f"  {'variant':<12} {'wall ms/step':>13} {'min':>8} {'max':>8} {'cpu ms/step':>12} {'samples/s':>10}")
    for n in wall:
        med = median(wall[n])
        print(
            f"  {n:<12} {med * 1e3:>13.3f} {min(wall[n]) * 1e3:>8.3f} {max(wall[n]) * 1e3:>8.3f}"
            f" {median(cpu[n]) * 1e3:>12.3f} {args.batch / med:>10.0f}"
        )
    for k in res["wall_ratios"]:
        print(f"  ratio {k:<20} wall {res['wall_ratios'][k]:.4f}   thread-cpu {res['cpu_ratios'][k]:.4f}")
    print(
        f"  engine - raw per step: wall {res['wall_engine_minus_raw_us']:+.1f} us, "
        f"thread-cpu {res['cpu_engine_minus_raw_us']:+.1f} us (median of per-round differences)"
    )

    if name == "vae" and not args.timing_only:
        keep: dict[str, Any] = {}
        train_engine(s, args, 1, keep=keep)
        trainer = keep["trainer"]
        x = s.images[: args.batch].float().div_(255.0)
        batch = (x, s.labels[: args.batch])
        losses = {k: torch.tensor(1.0) for k in ("loss", "recon", "kl", "beta")}
        h = hook_cost(trainer, trainer.model.phases(), batch, losses)
        h["fraction_of_step"] = h["per_step_s"] / res["median_wall_step_s"]["engine"]
        res["hooks"] = h
        print(f"  hooks: {h['calls_per_step']} calls/step with the built-in plugins loaded")
        for hook, d in h["per_call"].items():
            print(f"    {hook:<36} {d['s'] * 1e6:7.2f} us/call  impls: {', '.join(d['impls']) or '-'}")
        print(
            f"    per step {h['per_step_s'] * 1e6:.2f} us = {h['fraction_of_step'] * 100:.3f}% "
            f"of the engine's {res['median_wall_step_s']['engine'] * 1e3:.3f} ms step"
        )
    results[name] = res


SAMPLE_METRICS = ["frechet", "kid", "classifier_score", "class_coverage"]
TOOLKIT_VARIANTS: dict[str, dict[str, dict[str, Any]]] = {
    "engine": {},
    "engine+ema": {"trainer": {"ema_decay": 0.999}},
    "engine+val": {"data": {"val_fraction": 0.1}},
    "engine+val+sample_metrics": {
        "data": {"val_fraction": 0.1},
        "callbacks": {"sample_metrics": SAMPLE_METRICS, "sample_metrics_every": 1, "sample_metrics_n": 1000},
    },
}
"""What the toolkit costs: EMA against the plain engine; sample metrics (every epoch, 1,000 samples) against the
same run with its validation pass alone (both hold out 10% for validation)."""
TOOLKIT_PAIRS = (("engine+ema", "engine"), ("engine+val+sample_metrics", "engine+val"))


def toolkit_cost(name: str, args: argparse.Namespace, results: dict[str, Any]) -> None:
    """Per-epoch wall and thread-CPU time of the engine with EMA and with sample metrics, interleaved rounds.

    An epoch is timed from ``gentrain_on_train_epoch_start`` to ``gentrain_on_train_epoch_end``: its
    training steps and its validation pass, where the sample metrics run; the first ``--warmup``
    epochs are excluded. The classifiers of the sample metrics are trained once, before the rounds,
    and loaded from their cache by every timed run (a once-per-run cost, not per epoch).
    """
    s = make_setup(name, args)
    print(f"\n== toolkit cost per epoch: {name} ({s.config.model.params.arch}), {s.data_note}, batch {args.batch} ==")
    train_engine(s, args, 1, overrides=TOOLKIT_VARIANTS["engine+val+sample_metrics"])  # trains/caches classifiers
    variants: dict[str, Callable[[], Run]] = {
        v: (lambda v=v: train_engine(s, args, args.epochs, overrides=TOOLKIT_VARIANTS[v])) for v in TOOLKIT_VARIANTS
    }
    t = timing(s, args, variants)
    res: dict[str, Any] = {"per_epoch": {}, "added": {}}
    print(f"  {'variant':<26} {'wall s/epoch':>13} {'thread-cpu s/epoch':>19}")
    for v in variants:
        val_fraction = float(TOOLKIT_VARIANTS[v].get("data", {}).get("val_fraction", 0.0))
        steps = (len(s.images) - round(len(s.images) * val_fraction)) // args.batch  # as train_engine counts them
        wall = [x * steps for x in t["wall_step_s"][v]]
        cpu = [x * steps for x in t["cpu_step_s"][v]]
        res["per_epoch"][v] = {"wall_s": wall, "cpu_s": cpu}
        print(f"  {v:<26} {median(wall):>13.3f} {median(cpu):>19.3f}")
    for with_, without in TOOLKIT_PAIRS:
        a, b = res["per_epoch"][with_], res["per_epoch"][without]
        added_wall = median([x - y for x, y in zip(a["wall_s"], b["wall_s"], strict=True)])
        added_cpu = median([x - y for x, y in zip(a["cpu_s"], b["cpu_s"], strict=True)])
        ratio_wall = median([x / y for x, y in zip(a["wall_s"], b["wall_s"], strict=True)])
        ratio_cpu = median([x / y for x, y in zip(a["cpu_s"], b["cpu_s"], strict=True)])
        res["added"][f"{with_} - {without}"] = {
            "wall_s": added_wall,
            "cpu_s": added_cpu,
            "wall_ratio": ratio_wall,
            "cpu_ratio": ratio_cpu,
        }
        print(
            f"  {with_} vs {without}: {added_wall:+.3f} s/epoch wall ({ratio_wall:.3f}x), "
            f"{added_cpu:+.3f} s/epoch thread-cpu ({ratio_cpu:.3f}x) (medians of per-round figures)"
        )
    results.setdefault("toolkit", {})[name] = res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    add_common_args(p)
    p.add_argument("--models", default="vae,gan")
    p.add_argument("--reps", type=int, default=7, help="rounds (medians over these; at least 5 for the report)")
    p.add_argument("--epochs", type=int, default=4, help="epochs per timed run, warm-up included")
    p.add_argument("--warmup", type=int, default=1, help="leading epochs excluded from each run's time")
    p.add_argument("--check-epochs", type=int, default=3, help="epochs of the loss-identity runs")
    p.add_argument("--no-lightning", action="store_true")
    p.add_argument("--no-bare", action="store_true", help="skip the engine-with-callbacks-blocked variant")
    p.add_argument("--timing-only", action="store_true", help="skip the identity, work-count and hook checks")
    p.add_argument("--quick", action="store_true", help="2 rounds x 2 epochs: a smoke run, not a measurement")
    p.add_argument("--no-toolkit", action="store_true", help="skip what EMA and sample metrics cost per epoch")
    p.add_argument("--toolkit-only", action="store_true", help="only what EMA and sample metrics cost per epoch")
    args = p.parse_args(argv)
    if args.quick:
        args.reps, args.epochs, args.check_epochs = 2, 2, 1
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is visible")
    args.lightning = not args.no_lightning and lightning_available()

    env = environment()
    print("# bench/overhead.py " + " ".join(sys.argv[1:] if argv is None else argv))
    print("  " + ", ".join(f"{k}={v}" for k, v in env.items()))
    print(f"  device={args.device} precision={args.precision} threads={args.threads} batch={args.batch}")
    if not args.lightning:
        why = "--no-lightning" if args.no_lightning else "lightning not installed (pip install lightning)"
        print(f"  lightning: skipped: {why}")
    results: dict[str, Any] = {"env": env, "args": {k: str(v) for k, v in vars(args).items()}}
    results["lightning_skipped"] = (
        None if args.lightning else ("--no-lightning" if args.no_lightning else "not installed")
    )
    for name in args.models.split(","):
        if not args.toolkit_only:
            bench_model(name, args, results)
        if not args.no_toolkit:
            toolkit_cost(name, args, results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
