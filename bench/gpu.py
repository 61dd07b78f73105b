"""The engine on a GPU: the DCGAN and the conv VAE at 64×64 in bf16, engine vs a hand-written loop.

Issue #18, "The GPU path, proven on a real accelerator". Per model (``gan`` with
``arch=dcgan``, ``vae`` with ``arch=conv``; 64×64 procedural shapes, data resident
on the GPU as uint8 on both sides) and per compile setting (eager, and
``torch.compile`` of each sub-network: ``trainer.compile=true`` in the engine, the
same ``torch.compile`` of ``Model.ddp_modules()`` in the raw loop):

* step time (median timed epoch / steps) and samples/s of the raw loop and the engine;
* GPU utilisation while training: NVML samples (``torch.cuda.utilization``, else
  ``nvidia-smi -lms``) over each run's timed epochs;
* peak GPU memory (``torch.cuda.max_memory_allocated`` above what was allocated
  before the run; the run's own copy of the data counted on both sides).

``--reps`` rounds; each round runs every variant once, in an order rotated round to
round, and ratios are medians of per-round ratios (see ``bench/overhead.py``, whose
raw loop, engine runner and model setup this script imports). The figures go to
stdout and to ``OUT/gpu.json`` (``--out DIR``, default ``$OUT`` or ``.``).

Usage::

    python bench/gpu.py --out OUT                     # on a machine with a CUDA GPU
    python bench/gpu.py --allow-cpu-dry-run --out OUT # no GPU: a tiny CPU run of the same code path

Without CUDA and without ``--allow-cpu-dry-run`` it says so and exits with status 2.
``bash bench/gpu_check.sh OUT`` runs it with the GPU tests on a fresh machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gc
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
for _p in (str(ROOT), str(ROOT / "bench")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import overhead  # noqa: E402
from overhead import Run, Setup, environment, median, paired_ratio, train_engine, train_raw  # noqa: E402

import engine  # noqa: E402
import plugins.datasets.io as shapes_io  # noqa: E402

NO_CUDA = (
    "bench/gpu.py: no CUDA device is visible to this process (torch {torch}, CUDA build {cuda}); "
    "nothing measured. Run it on a machine with a GPU (bash bench/gpu_check.sh OUT), "
    "or pass --allow-cpu-dry-run for a tiny CPU run of the same code path."
)
MODELS = {"gan": "DCGAN (model.name=gan, arch=dcgan)", "vae": "conv VAE (model.name=vae, arch=conv)"}
SIDES = ("raw", "engine")


# ---------------------------------------------------------------------------
# what this script changes in bench/overhead.py's setup
# ---------------------------------------------------------------------------


def use_shapes_of_side(size: int) -> None:
    """Every run trains on procedural shapes of ``size``×``size``, rendered once per process.

    ``overhead.run_config`` and ``overhead.make_setup`` take their data section from
    ``overhead.data_section`` (MNIST at 28×28); the DCGAN at 64×64 needs other data.
    Rendering 64×64 shapes takes seconds, outside every timed epoch but not outside the
    check's time budget, so the renderer is memoised (the images are never written to).
    """

    def shapes_section(limit: int) -> tuple[dict[str, Any], str]:
        return {"name": "shapes", "n": limit, "size": size}, f"shapes, {size}×{size}, {limit} images"

    overhead.data_section = shapes_section
    if not hasattr(shapes_io.make_shapes, "cache_info"):
        shapes_io.make_shapes = functools.lru_cache(maxsize=4)(shapes_io.make_shapes)


def with_compile(base: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """``overhead.run_config`` plus ``trainer.compile`` from ``args.compile``."""

    @functools.wraps(base)
    def run_config(name: str, args: argparse.Namespace, *rest: Any, **kw: Any) -> dict[str, Any]:
        config = base(name, args, *rest, **kw)
        config["trainer"]["compile"] = bool(getattr(args, "compile", False))
        return config

    return run_config


@dataclasses.dataclass
class GpuSetup(Setup):
    """The raw loop's model, with each sub-network compiled when ``compile`` is set (as ``trainer.compile``)."""

    compile: bool = False

    def build(self, seed: int) -> engine.Model:
        model = super().build(seed)
        if self.compile:
            for name, module in model.ddp_modules().items():
                setattr(model, name, torch.compile(module))
        return model


def make_setup(name: str, args: argparse.Namespace) -> GpuSetup:
    """The shared setup on the CPU (the raw side copies the data to the GPU inside each measured run)."""
    cpu_args = argparse.Namespace(**{**vars(args), "device": "cpu"})
    s = overhead.make_setup(name, cpu_args)
    fields = {f.name: getattr(s, f.name) for f in dataclasses.fields(Setup)}
    return GpuSetup(**{**fields, "device": torch.device(args.device)})


# ---------------------------------------------------------------------------
# GPU utilisation and memory
# ---------------------------------------------------------------------------


class UtilSampler:
    """Samples GPU utilisation (percent) every ``period`` seconds in a thread, with ``perf_counter`` times."""

    def __init__(self, period: float = 0.1) -> None:
        self.period = period
        self.samples: list[tuple[float, float]] = []
        self.source = "none"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        if not torch.cuda.is_available():
            return
        try:
            torch.cuda.utilization(0)
            self.source = "torch.cuda.utilization (NVML)"
            self._thread = threading.Thread(target=self._poll, daemon=True)
        except Exception:
            smi = shutil.which("nvidia-smi")
            if smi is None:
                return
            self.source = "nvidia-smi --query-gpu=utilization.gpu -lms"
            cmd = [smi, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i", "0"]
            self._proc = subprocess.Popen(
                [*cmd, "-lms", str(int(self.period * 1000))], stdout=subprocess.PIPE, text=True
            )
            self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(self.period):
            self.samples.append((time.perf_counter(), float(torch.cuda.utilization(0))))

    def _read(self) -> None:
        assert self._proc is not None
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            try:
                self.samples.append((time.perf_counter(), float(line.strip())))
            except ValueError:
                continue

    def stop(self) -> None:
        self._stop.set()
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=5)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def mean(self, t0: float, t1: float) -> float | None:
        window = [u for t, u in self.samples if t0 <= t <= t1]
        return sum(window) / len(window) if window else None


@dataclasses.dataclass
class Measured:
    step_s: float
    util: float | None
    peak_bytes: int | None


def measure(run: Callable[[], Run], device: torch.device, warmup: int, sampler: UtilSampler) -> Measured:
    """One run: its step time, mean utilisation over its timed epochs, its peak GPU memory above the start."""
    gc.collect()
    base = 0
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    r = run()
    t1 = time.perf_counter()
    peak = torch.cuda.max_memory_allocated(device) - base if device.type == "cuda" else None
    # The timed epochs are the last ones; the window ends when the run returns (for the engine
    # that includes writing its final checkpoint, a few milliseconds after the last epoch).
    t0 = t1 - sum(r.epoch_s[warmup:] or r.epoch_s)
    return Measured(r.step_s(warmup), sampler.mean(t0, t1), peak)


def raw_run(s: GpuSetup, args: argparse.Namespace) -> Run:
    """The raw loop with the data copied to the GPU inside the measured run (the engine's loader does the same)."""
    on_device = dataclasses.replace(s, images=s.images.to(s.device), labels=s.labels.to(s.device))
    try:
        return train_raw(on_device, args, args.epochs)
    finally:
        del on_device


# ---------------------------------------------------------------------------
# the benchmark
# ---------------------------------------------------------------------------


def bench_model(
    name: str, args: argparse.Namespace, sampler: UtilSampler, out: dict[str, Any], save: Callable[[], None]
) -> None:
    """Both sides of one model, eager and/or compiled, into ``out``; ``save`` after each mode."""
    out["model"] = MODELS[name]
    for compiled in args.compile_modes:
        margs = argparse.Namespace(**{**vars(args), "compile": compiled})
        s = make_setup(name, margs)
        s.compile = compiled
        steps = len(s.images) // args.batch
        variants: dict[str, Callable[[], Run]] = {
            "raw": functools.partial(raw_run, s, margs),
            "engine": functools.partial(train_engine, s, margs, margs.epochs),
        }
        per: dict[str, list[Measured]] = {n: [] for n in variants}
        mode = "compiled" if compiled else "eager"
        print(f"== {MODELS[name]}, {mode}, {args.precision}, batch {args.batch}, {steps} steps/epoch ==", flush=True)
        names = list(variants)
        for r in range(args.reps):
            k = r % len(names)
            order = names[k:] + names[:k]
            for n in order:
                per[n].append(measure(variants[n], s.device, args.warmup, sampler))
            line = "  ".join(f"{n}={per[n][-1].step_s * 1e3:.3f}" for n in names)
            print(f"    round {r + 1}/{args.reps} ({' > '.join(order)}) ms/step: {line}", flush=True)
        out[mode] = summarise(per, args.batch, steps)
        save()
        del s
        gc.collect()
    if "eager" in out and "compiled" in out:
        out["compiled_over_eager_step"] = {
            side: out["compiled"][side]["step_ms"] / out["eager"][side]["step_ms"] for side in SIDES
        }
        save()


def summarise(per: dict[str, list[Measured]], batch: int, steps: int) -> dict[str, Any]:
    res: dict[str, Any] = {"steps_per_epoch": steps, "rounds": len(per["raw"])}
    for side, runs in per.items():
        step = median([m.step_s for m in runs])
        utils = [m.util for m in runs if m.util is not None]
        peaks = [m.peak_bytes for m in runs if m.peak_bytes is not None]
        res[side] = {
            "step_ms": step * 1e3,
            "step_ms_per_round": [m.step_s * 1e3 for m in runs],
            "samples_per_s": batch / step,
            "gpu_util_percent": median(utils) if utils else None,
            "peak_mib": max(peaks) / 2**20 if peaks else None,
        }
    walls = {side: [m.step_s for m in runs] for side, runs in per.items()}
    res["engine_over_raw_step"] = paired_ratio(walls, "engine", "raw")
    raw_peak, eng_peak = res["raw"]["peak_mib"], res["engine"]["peak_mib"]
    res["engine_over_raw_peak_memory"] = eng_peak / raw_peak if raw_peak and eng_peak else None
    return res


def fmt(x: float | None, spec: str = ".3f") -> str:
    return "n/a" if x is None else format(x, spec)


def report(results: dict[str, Any]) -> None:
    print("\n== summary (medians of interleaved rounds; ratios: medians of per-round ratios) ==")
    print(f"  {'model':<5} {'mode':<9} {'side':<7} {'ms/step':>9} {'samples/s':>10} {'GPU util %':>10} {'peak MiB':>9}")
    for name, res in results["models"].items():
        for mode in ("eager", "compiled"):
            if mode not in res:
                continue
            for side in SIDES:
                v = res[mode][side]
                print(
                    f"  {name:<5} {mode:<9} {side:<7} {v['step_ms']:>9.3f} {v['samples_per_s']:>10.0f} "
                    f"{fmt(v['gpu_util_percent'], '.0f'):>10} {fmt(v['peak_mib'], '.1f'):>9}"
                )
            print(
                f"  {name:<5} {mode:<9} engine/raw step time {res[mode]['engine_over_raw_step']:.4f}, "
                f"peak memory {fmt(res[mode]['engine_over_raw_peak_memory'], '.4f')}"
            )
        if "compiled_over_eager_step" in res:
            c = res["compiled_over_eager_step"]
            print(f"  {name:<5} compiled/eager step time: raw {c['raw']:.4f}, engine {c['engine']:.4f}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")), help="folder for gpu.json")
    p.add_argument("--models", default="gan,vae", help="comma-separated: gan (DCGAN), vae (conv VAE)")
    p.add_argument("--size", type=int, default=64, help="image side (DCGAN: 4·2^k or 7·2^k)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=32, help="steps per epoch (images = steps × batch)")
    p.add_argument("--epochs", type=int, default=4, help="epochs per run, the first --warmup not timed")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--reps", type=int, default=3, help="interleaved rounds per model and compile setting")
    p.add_argument("--precision", choices=["bf16", "32"], default="bf16")
    p.add_argument("--no-compile", action="store_true", help="eager only")
    p.add_argument("--compile-only", action="store_true", help="compiled only")
    p.add_argument("--threads", type=int, default=overhead.default_threads())
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--allow-cpu-dry-run",
        action="store_true",
        help="without CUDA: a tiny CPU run of the same code path (16×16, batch 8), exit 0; measures nothing",
    )
    args = p.parse_args(argv)
    if args.no_compile and args.compile_only:
        p.error("--no-compile and --compile-only exclude each other")
    args.compile_modes = [False] if args.no_compile else [True] if args.compile_only else [False, True]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    dry = not torch.cuda.is_available()
    if dry and not args.allow_cpu_dry_run:
        print(NO_CUDA.format(torch=torch.__version__, cuda=torch.version.cuda or "none"), file=sys.stderr)
        return 2
    if dry:
        print("bench/gpu.py: no CUDA device; --allow-cpu-dry-run: a tiny CPU run, NOT a measurement", flush=True)
        args.size, args.batch, args.steps, args.epochs, args.warmup, args.reps = 16, 8, 4, 2, 1, 1
    for name in args.models.split(","):
        if name not in MODELS:
            print(f"bench/gpu.py: unknown model {name!r}; choose from {', '.join(MODELS)}", file=sys.stderr)
            return 2
    # What bench/overhead.py's functions read from their arguments.
    args.device = "cpu" if dry else "cuda"
    args.arch = "conv"
    args.limit = args.steps * args.batch
    use_shapes_of_side(args.size)
    overhead.run_config = with_compile(overhead.run_config)

    env = environment()
    print("  " + ", ".join(f"{k}={v}" for k, v in env.items()), flush=True)
    settings = {
        k: getattr(args, k) for k in ("size", "batch", "steps", "epochs", "warmup", "reps", "precision", "threads")
    }
    settings |= {"device": args.device, "compile_modes": ["compiled" if c else "eager" for c in args.compile_modes]}
    results: dict[str, Any] = {"dry_run": dry, "complete": False, "env": env, "settings": settings, "models": {}}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "gpu.json"
    sampler = UtilSampler()

    def save() -> None:
        results["util_source"] = sampler.source
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(results, indent=2))
        tmp.replace(path)

    sampler.start()
    try:
        for name in args.models.split(","):
            bench_model(name, args, sampler, results["models"].setdefault(name, {}), save)
    finally:
        sampler.stop()
    results["complete"] = True
    save()
    report(results)
    print(f"\nwrote {path}" + (" (dry run: no figures)" if dry else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
