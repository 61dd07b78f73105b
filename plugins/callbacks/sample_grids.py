"""PNG grids of samples from fixed noise and of reconstructions, every ``callbacks.sample_every`` epochs.

Files: ``<run dir>/samples/epoch=0003-samples.png`` and ``...-reconstructions.png``
(originals on odd rows, reconstructions below them). The noise is drawn from
a private generator so the grids do not disturb the training RNG streams.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

import engine


def image_grid(images: torch.Tensor, nrow: int | None = None, pad: int = 2) -> Image.Image:
    """Tile ``N×C×H×W`` images in ``[0, 1]`` into one PIL image."""
    images = images.detach().float().clamp(0, 1).cpu()
    n, c, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    ncol = math.ceil(n / nrow)
    grid = torch.ones(c, ncol * (h + pad) + pad, nrow * (w + pad) + pad) * 0.5
    for i in range(n):
        r, col = divmod(i, nrow)
        grid[:, pad + r * (h + pad) : pad + r * (h + pad) + h, pad + col * (w + pad) : pad + col * (w + pad) + w] = (
            images[i]
        )
    array = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(array[:, :, 0] if c == 1 else array, mode="L" if c == 1 else "RGB")


@dataclass(frozen=True)
class SampleGridOptions:
    """``callbacks.sample_every`` (epochs; 0 turns grids off) and ``callbacks.num_samples`` (images per grid)."""

    sample_every: engine.NonNegativeInt = 1
    num_samples: engine.PositiveInt = 64


@engine.hookimpl
def gentrain_register_options(registry: engine.Registry[Any]) -> None:
    registry.add("sample_grids", SampleGridOptions, SampleGridOptions, kind="callbacks")


@engine.hookimpl
def gentrain_on_train_epoch_end(trainer: Any, epoch: int) -> None:
    every = trainer.config.callbacks.sample_every
    last = trainer.epoch >= trainer.config.trainer.epochs
    if not trainer.is_rank_zero or every == 0 or ((epoch + 1) % every != 0 and not last):
        return
    out = Path(trainer.run_dir) / "samples"
    out.mkdir(parents=True, exist_ok=True)
    n = trainer.config.callbacks.num_samples
    spec = trainer.data_spec
    with trainer.unwrapped(ema=True) as model, torch.random.fork_rng(devices=[]):
        # Fixed noise: the same seed every epoch, so grids are comparable over time.
        torch.manual_seed(trainer.config.trainer.seed + 12345)
        model.eval()
        try:
            with torch.no_grad():
                labels = None
                if spec.num_classes:
                    labels = torch.arange(n, device=model.device) % spec.num_classes
                try:
                    samples = model.sample(n, labels=labels)
                except NotImplementedError:
                    samples = None
                if samples is not None:
                    # One column per class when there are enough classes to fill a row (MNIST: 10).
                    nrow = spec.num_classes if spec.num_classes and 8 <= spec.num_classes <= 16 else None
                    image_grid(samples, nrow=nrow).save(out / f"epoch={epoch + 1:04d}-samples.png")
                batch = getattr(trainer, "fixed_batch", None)
                if batch is not None:
                    try:
                        recon = model.reconstruct(batch)
                    except NotImplementedError:
                        recon = None
                    if recon is not None:
                        k = min(len(batch), 8)
                        rows = [t for i in range(0, len(batch), k) for t in (batch[i : i + k], recon[i : i + k])]
                        image_grid(torch.cat(rows), nrow=k).save(out / f"epoch={epoch + 1:04d}-reconstructions.png")
        finally:
            model.train()
