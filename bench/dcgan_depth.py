"""What ``model.refine`` and ``model.disc_refine`` cost per DCGAN training step. Not a test.

The GAN plugin's own model on MNIST-shaped images (1×28×28, ``latent_dim=64``, 64
channels, batch 64), stepped as the engine's loop steps it: for each phase of
``model.phases()``, ``model.training_step(batch, phase)["loss"]``, backward, then
that phase's Adam (lr 2e-4, betas 0.5/0.999). Three variants:

    plain          refine=0, disc_refine=0 (the plain DCGAN)
    refine         refine=1, disc_refine=0
    refine+disc    refine=1, disc_refine=1 (``recipes/gan_mnist.py``)

Rounds interleave the variants, in an order rotated from round to round; each
round times ``--steps`` steps of each. Per-step wall and process-CPU seconds are
medians over rounds; the ratios are medians of the per-round ratios to ``plain``.
Data loading is left out (it is the same for all three).

    .venv/bin/python bench/dcgan_depth.py                  # 1 thread, 15 rounds
    .venv/bin/python bench/dcgan_depth.py --threads 2 --rounds 9
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import engine  # noqa: E402
from plugins.gan.config import GANConfig  # noqa: E402
from plugins.gan.model import GAN  # noqa: E402

VARIANTS = {"plain": (0, 0), "refine": (1, 0), "refine+disc": (1, 1)}
BATCH = 64


class Variant:
    def __init__(self, refine: int, disc_refine: int, seed: int) -> None:
        torch.manual_seed(seed)
        spec = engine.DataSpec((1, 28, 28), 10)
        self.model = GAN(GANConfig(arch="dcgan", latent_dim=64, refine=refine, disc_refine=disc_refine), spec)
        groups = self.model.param_groups()
        self.optims = {name: torch.optim.Adam(params, lr=2e-4, betas=(0.5, 0.999)) for name, params in groups.items()}
        self.batch = (torch.rand(BATCH, 1, 28, 28), torch.randint(0, 10, (BATCH,)))

    def step(self) -> None:
        for phase in self.model.phases():
            opt = self.optims[phase.name]
            opt.zero_grad(set_to_none=True)
            self.model.training_step(self.batch, phase.name)["loss"].backward()
            opt.step()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    p.add_argument("--rounds", type=int, default=15, help="interleaved rounds (default 15)")
    p.add_argument("--steps", type=int, default=5, help="steps of each variant per round (default 5)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    variants = {name: Variant(r, d, seed=0) for name, (r, d) in VARIANTS.items()}
    for v in variants.values():  # warm-up: allocator, first-call costs
        v.step()
    wall: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            w, c = time.perf_counter(), time.process_time()
            for _ in range(args.steps):
                variants[name].step()
            wall[name].append((time.perf_counter() - w) / args.steps)
            cpu[name].append((time.process_time() - c) / args.steps)
    print(
        f"DCGAN step cost: torch {torch.__version__}, {args.threads} thread(s), batch {BATCH}, "
        f"{args.rounds} rounds × {args.steps} steps (medians)"
    )
    print(f"{'variant':<12} {'wall ms/step':>13} {'cpu ms/step':>12} {'wall ratio':>11} {'cpu ratio':>10}")
    for name in names:
        w_ratio = statistics.median(a / b for a, b in zip(wall[name], wall["plain"], strict=True))
        c_ratio = statistics.median(a / b for a, b in zip(cpu[name], cpu["plain"], strict=True))
        print(
            f"{name:<12} {statistics.median(wall[name]) * 1e3:>13.1f} {statistics.median(cpu[name]) * 1e3:>12.1f} "
            f"{w_ratio:>11.2f} {c_ratio:>10.2f}"
        )


if __name__ == "__main__":
    main()
