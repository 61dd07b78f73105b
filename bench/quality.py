"""Model quality: the engine's VAE, AE, GAN and AE-GAN next to hand-written PyTorch references. Not a test.

Everything trains on the real MNIST test set split exactly as the engine splits
it (``engine.data.split``, ``val_fraction=0.1``, ``split_seed=0``): 9,000
training images, 1,000 held-out images. The engine side is ``engine.fit`` in
this process (``scaling.num_workers=0``, trainer callbacks off); the reference
side is a plain PyTorch loop written in this file. Both sides use the same
architecture, optimizer, batch size, epochs and seeds (the global RNG is seeded
with the seed before each side builds its nets); each side shuffles its own
data. Every figure is measured by the same function of :mod:`engine.metrics`
on the same 1,000 held-out images.

What is compared (the ``ratio`` column is engine / reference, per seed, then
mean ± sd over seeds):

============  ==============================================================
VAE           the plugin's default MLP VAE (784-400-20, ReLU, Bernoulli
              decoder) vs the pytorch/examples VAE written out below
              (fc1/fc21/fc22/fc3/fc4, summed BCE + KL over the batch, sigmoid
              outputs). Adam 1e-3, batch 128. Held-out negative ELBO
              (``metrics.elbo``, 10 posterior samples per image, nats per
              image); target ratio ≤ 1.00. The IWAE bound (k=50) is shown too.
AE            the plugin's default MLP AE (784-400-20, ReLU, ``recon_loss=bce``
              on logits, summed over pixels, batch mean) vs the same nets and
              the same loss in a hand-written loop. Adam 1e-3, batch 128.
              Held-out squared error per image (``metrics.reconstruction_error``);
              target ratio ≤ 1.00.
GAN           the plugin's MLP GAN (latent 64, two hidden layers of 256,
              non-saturating loss, one D update per G update) vs a hand-written
              loop over the plugin's own Generator/Discriminator (instantiated
              through the model registry, so architecture and initial weights
              are identical), pytorch/examples-DCGAN style: one fake batch per
              step, D on ``fake.detach()``, then G. Adam 1e-3, betas
              (0.5, 0.999) for both nets, batch 64. Classifier Fréchet distance
              of 1,000 samples (``metrics.frechet_report``); target ratio ≤ 1.00.
DCGAN         ``recipes/gan_mnist.py`` (its model, optimizer and global batch:
              DCGAN, 64 channels, latent 64, Adam 2e-4, betas (0.5, 0.999),
              64 × 2 workers = 128, ``--dcgan-batch``) for 20 epochs (1,400
              steps) with its ``trainer.ema_decay`` (``--ema-decay``). One run gives both
              sides of the EMA bar: the EMA only reads the weights, so the raw
              weights are those of the same run without EMA (tested bit for bit
              in ``tests/engine/test_toolkit.py``). Bar: EMA samples' Fréchet
              distance ≤ 0.80 × the raw weights', both from 9,000 samples
              against all 9,000 training images (at 1,000 a side the
              estimator's upward bias, the real-data floor, is as large as the
              gap measured; the n=1,000 ratio is shown too). Classifier score
              and rarest digit are shown as information.
DCGAN steps   the same recipe at its own budget: its global batch (64 × 2
              workers = 128) for its optimizer steps (10 epochs of 54,000
              images: 4,210), here 60 epochs of the 9,000 images (4,200
              steps), one process. Its samples are the EMA weights' (what
              ``engine.load`` draws by default). Bars: classifier score ≥ 8.0
              and every digit ≥ 5% of the samples (the rarest class's share;
              the reference column holds the held-out real images' figures).
              Figures at each third of the run are printed on the way.
cGAN          ``recipes/cgan_mnist.py`` (conditional DCGAN, projection
              discriminator) at its 20 epochs: samples drawn for the digits
              0..9 classified as the requested digit ≥ 95% of the time (label
              accuracy); the within-class pixel spread (per-pixel std over the
              samples of one digit, averaged) ≥ 0.80 × that of real held-out
              digits (a generator ignoring z has 0). The classifier-feature
              spread is shown too.
AE-GAN        ``recipes/aegan_mnist.py`` (conv nets, VAE encoder, image
              adversary whose weight adapts so that it carries 40% of the
              decoder's last-layer gradient; Adam 1e-3 for the autoencoder,
              2e-4 for the discriminator) at its 10 epochs, vs the same
              recipe with ``adv_weight=0``: decoded N(0, I) samples' Fréchet
              distance ≤ 0.80 × the adversary-free one's, held-out squared error
              within 10% of it. The adversary's logged gradient share is shown.
              When the adversary-free samples fail the agreement check, the
              bar is withheld; two rows then give the same distances without
              the check, in the feature classifier's and in the check
              classifier's own features (information, not a bar).
============  ==============================================================

Every classifier figure goes through the agreement check of
:class:`engine.metrics.ClassifierPair`: when the feature classifier and the
independently trained check classifier put the samples into classes with a
total variation above 0.15, the figure is NaN and its row says "withheld".

The Fréchet distances use :class:`engine.metrics.FeatureClassifier` trained on
the 9,000 training images (cached with its check classifier by
``ClassifierPair.for_dataset``), in its distance features: several of its
layers, so that light noise and blur show (``engine/classifier.py``; figures of
``bench/QUALITY.md`` dated before 2026-12-06 are in its penultimate layer alone,
and are not comparable with later ones). Every one is printed
next to the real-data floor: 1,000 held-out real images against the same 1,000
training images every model's samples are compared with.

Settings (default / ``--quick``; ``--smoke`` is 1 epoch of everything, 2 seeds, 8-channel conv nets):

* seeds 0, 1, 2 / 0, 1 (engine and reference alike);
* VAE and AE 10 / 3 epochs, batch 128; MLP GAN 15 / 5 epochs, batch 64;
* the recipes: DCGAN 20 / 5 epochs, cGAN 20 / 5, AE-GAN 10 / 3, each with its own batch;
  the recipes' epochs are over the 9,000 training images here, not their 60,000
  (the same epochs, 15% of the optimizer steps); DCGAN steps 60 / 6 epochs of batch 128
  (the recipe's optimizer steps);
* ``torch.set_num_threads(1)`` on both sides (``--threads``).

The default run needs about 5 hours of CPU time (one thread; the conv recipes are
most of it, the DCGAN at its own steps about 53 minutes a seed), ``--quick`` about 20
minutes; run parts and seeds side by side with ``--parts`` and ``--seed-list`` (for
instance ``--parts dcgan_steps --seed-list 0`` next to ``--seed-list 1``). The targets are meant for the default run.

"Met?" is ``met`` when the mean over seeds meets the target, ``noise`` when it
does not but the 95% confidence interval of that mean (Student's t over the
per-seed values) reaches the target, so the miss is not told apart from seed
noise, ``not met`` otherwise; the spread over seeds is the ``± sd [min, max]``.
With 2 or 3 seeds only gaps of a few percent are resolved; run more seeds (``--seeds``) to look closer.

Both sides drop the last partial batch of each epoch, as the engine's training
loader does (9,000 = 70 × 128 + 40 = 140 × 64 + 40), so they take the same
number of optimizer steps of the same size. (pytorch/examples keeps the partial
batch, which would give the reference 1.4% more steps.) The reference VAE sums
its loss over the batch where the engine averages (Adam is invariant to that
scale) and trains through ``sigmoid`` + ``binary_cross_entropy`` as
pytorch/examples does; for evaluation its decoder logits go through the same
``metrics.elbo`` as the engine's.

Grids (PNG) are written to ``bench/out/quality/`` for the first seed: samples
from the same noise side by side (DCGAN: raw and EMA weights; AE-GAN: with and
without the adversary), reconstructions of the same held-out images side by
side, and the conditional GAN with row ``r`` = digit ``r``.

Run::

    .venv/bin/python bench/quality.py            # the full comparison
    .venv/bin/python bench/quality.py --quick    # fewer epochs and seeds
    .venv/bin/python bench/quality.py --smoke    # the smallest run through every part
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import importlib.util
import math
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import engine  # noqa: E402
from engine import checkpoint  # noqa: E402
from engine.config import ModelSection  # noqa: E402
from engine.data import ImageData, split, to_float  # noqa: E402
from engine.metrics import (  # noqa: E402
    ClassifierPair,
    FeatureClassifier,
    class_accuracy,
    class_histogram,
    classifier_features,
    elbo,
    frechet_distance,
    frechet_report,
    iwae_bound,
    reconstruction_error,
    sample_report,
    within_class_spread,
)
from engine.plugins import PluginManager, load_plugins, using  # noqa: E402

MNIST_ROOT = Path("/work/shared/data/mnist")
OUT_DIR = ROOT / "bench" / "out" / "quality"
CALLBACK_PLUGINS = ("progress", "csv_logger", "tensorboard", "sample_grids", "early_stopping", "plots")
"""The built-in trainer plugins; blocked (they write files and draw grids we do not need)."""
EVAL_SEED = 0
"""Seed of every evaluation: ELBO/IWAE noise, the fixed sample noise, the Fréchet subsets."""
N_SAMPLES = 1000
"""Generated images per Fréchet distance: as many as held-out images, so the floor is at the same n."""
N_LARGE = 9000
"""Samples of the EMA bar's Fréchet distance, against all 9,000 training images (``Context.frechet_large``)."""
T_975 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}
"""Two-sided 95% Student t quantiles by degrees of freedom (2.0 beyond)."""


@dataclass(frozen=True)
class Settings:
    seeds: tuple[int, ...]
    vae_epochs: int
    ae_epochs: int
    gan_epochs: int
    dcgan_epochs: int
    aegan_epochs: int
    cgan_epochs: int
    batch: int = 128
    gan_batch: int = 64
    lr: float = 1e-3
    gan_lr: float = 1e-3
    gan_betas: tuple[float, float] = (0.5, 0.999)
    #: ``model.channels`` of the recipes' conv nets; None keeps each recipe's own.
    channels: int | None = None
    #: ``--model-set``: model fields laid over every recipe's (a variant measured on the same bars).
    model_set: tuple[tuple[str, Any], ...] = ()
    #: ``trainer.ema_decay`` of the DCGAN part (``--ema-decay``; with the engine's warm-up ramp);
    #: None: the recipe's own.
    ema_decay: float | None = None
    #: Epochs of the ``dcgan_steps`` part; None: the recipe's optimizer steps (:func:`recipe_steps`).
    dcgan_steps_epochs: int | None = None
    #: Batch of the ``dcgan`` part (``--dcgan-batch``); None: the recipe's global batch
    #: (``trainer.batch_size × scaling.num_workers``, what its DDP steps average over).
    dcgan_batch: int | None = None


# DCGAN 20 epochs (the EMA bar's budget); the cGAN and AE-GAN recipes' own epochs (20 and 10),
# here over 9,000 images rather than the recipes' 60,000 (the same epochs, 15% of the steps).
FULL = Settings(
    seeds=(0, 1, 2), vae_epochs=10, ae_epochs=10, gan_epochs=15, dcgan_epochs=20, aegan_epochs=10, cgan_epochs=20
)
QUICK = Settings(seeds=(0, 1), vae_epochs=3, ae_epochs=3, gan_epochs=5, dcgan_epochs=5, aegan_epochs=3, cgan_epochs=5)
QUICK = dataclasses.replace(QUICK, dcgan_steps_epochs=6)
#: ``--smoke``: the smallest run through every part (1 epoch, 2 seeds, small conv nets); no bar means anything there.
SMOKE = Settings(
    seeds=(0, 1), vae_epochs=1, ae_epochs=1, gan_epochs=1, dcgan_epochs=1, aegan_epochs=1, cgan_epochs=1, channels=8
)
SMOKE = dataclasses.replace(SMOKE, dcgan_steps_epochs=2)


def recipe(name: str) -> dict[str, Any]:
    """``CONFIG`` of ``recipes/<name>.py``: the bars are on the recipes' defaults."""
    spec = importlib.util.spec_from_file_location(f"quality_recipe_{name}", ROOT / "recipes" / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return copy.deepcopy(module.CONFIG)


# ---------------------------------------------------------------------------
# the data, the plugin manager and the classifier, shared by every part
# ---------------------------------------------------------------------------


@dataclass
class Context:
    pm: PluginManager
    data: dict[str, Any]  # the engine's data config section
    train: ImageData
    held: ImageData
    spec: engine.DataSpec
    threads: int
    runs: Path  # the engine's run directories (temporary)
    out: Path  # the PNG grids
    clf: FeatureClassifier | None = None
    pair: ClassifierPair | None = None
    train_features: Tensor | None = None  # the feature classifier's features of every training image

    def real_spread(self) -> float:
        """Mean pixel std within each class of the held-out images (what a diverse conditional model shows)."""
        x = to_float(self.held.images)
        return statistics.fmean(float(x[self.held.labels == c].std(0).mean()) for c in range(10))

    def frechet(self, images: Tensor) -> tuple[float, float]:
        """``(Fréchet distance, real-data floor)`` of ``images`` against the same 1,000 training images."""
        assert self.clf is not None
        r = frechet_report(self.clf, images, self.train.images, self.held.images, seed=EVAL_SEED)
        if self.pair is not None:
            _, reason = self.pair.check(images)
            if reason is not None:
                print(f"    withheld: {reason}", flush=True)
                return math.nan, r["frechet_real_floor"]
        return r["frechet"], r["frechet_real_floor"]

    def frechet_large(self, images: Tensor) -> tuple[float, float]:
        """``(Fréchet distance, floor)`` of all of ``images`` (``N_LARGE``) against all the training images' features.

        The estimate of a Fréchet distance from ``n`` samples a side is biased upwards by
        about ``tr(Σ)·(1/n_a + 1/n_b)``: at 1,000 against 1,000 that bias is the real-data
        floor (1.7 here), as large as the gap between two good generators, and it pulls
        their ratio towards 1. At 9,000 against 9,000 it is a ninth of that. The floor
        returned is the 1,000 held-out images against the same 9,000 training images
        (bias from its 1,000 side only). NaN when the two classifiers disagree.
        """
        assert self.clf is not None
        assert self.pair is not None
        if self.train_features is None:
            self.train_features = classifier_features(self.clf, self.train.images)
        floor = frechet_distance(classifier_features(self.clf, self.held.images), self.train_features)
        _, reason = self.pair.check(images)
        if reason is not None:
            print(f"    withheld: {reason}", flush=True)
            return math.nan, floor
        return frechet_distance(classifier_features(self.clf, images), self.train_features), floor

    def report(self, images: Tensor, labels: Tensor | None = None) -> dict[str, Any]:
        """:func:`engine.metrics.sample_report`: every sample metric behind the two classifiers' agreement check."""
        assert self.pair is not None
        r = sample_report(self.pair, images, self.train.images, self.held.images, labels=labels, seed=EVAL_SEED)
        if r["reason"] is not None:
            print(f"    withheld: {r['reason']}", flush=True)
        return r


def make_context(mnist: Path, threads: int, runs: Path, out: Path) -> Context:
    pm = load_plugins(autoload=False, blocked=CALLBACK_PLUGINS)
    data = {"name": "mnist", "root": str(mnist), "split": "test", "val_fraction": 0.1, "split_seed": 0}
    # prepare() validates and loads exactly what fit() will; split() is the engine's own split.
    config, dataset = engine.prepare({"model": {"name": "vae"}, "data": data}, plugins=pm)
    train, held = split(dataset, config.data)
    if (len(train), len(held)) != (9000, 1000):
        raise SystemExit(f"expected a 9,000 / 1,000 split of the MNIST test set, got {len(train)} / {len(held)}")
    return Context(pm, data, train, held, dataset.spec, threads, runs, out)


def fixed_noise(n: int, dim: int, seed: int = EVAL_SEED) -> Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


def epochs_of(images: Tensor, batch: int, gen: torch.Generator) -> Iterator[Tensor]:
    """The reference loops' batches of one epoch: a fresh permutation, the last partial batch dropped.

    Dropping it is what the engine's training loader does, so both sides take the
    same number of optimizer steps of the same size.
    """
    idx = torch.randperm(len(images), generator=gen)
    yield from idx[: len(idx) - len(idx) % batch].split(batch)


# ---------------------------------------------------------------------------
# the engine side
# ---------------------------------------------------------------------------


def run_engine(
    ctx: Context,
    model: dict[str, Any],
    optim: dict[str, Any],
    epochs: int,
    batch: int,
    seed: int,
    trainer: dict[str, Any] | None = None,
) -> engine.FitResult:
    """``engine.fit`` in this process (one checkpoint, at the end, unless ``trainer`` says otherwise)."""
    name = f"{model['name']}-{'-'.join(f'{k}={v}' for k, v in model.items() if k != 'name')}-seed{seed}"
    name += "".join(f"-{k}={v}" for k, v in (trainer or {}).items())
    config = {
        "model": model,
        "data": ctx.data,
        "optim": optim,
        "trainer": {
            "epochs": epochs,
            "batch_size": batch,
            "seed": seed,
            "num_threads": ctx.threads,
            "checkpoint_every": epochs,
            "keep_checkpoints": 1,
            **(trainer or {}),
        },
        "scaling": {"num_workers": 0},
        "run": {"output_dir": str(ctx.runs), "name": re.sub(r"[^\w.-]", "_", name), "resume": "never"},
        "callbacks": {"progress": False, "csv": False, "tensorboard": False, "sample_every": 0},
    }
    return engine.fit(config, plugins=ctx.pm)


def fit_engine(ctx: Context, *args: Any, **kwargs: Any) -> tuple[engine.Model, dict[str, float], engine.Model | None]:
    """:func:`run_engine` (same arguments); the trained model loaded back from its final checkpoint.

    Returns ``(model, metrics, averaged)``: ``model`` holds the raw weights and, when
    ``trainer`` has ``ema_decay``, ``averaged`` the same model with the EMA weights
    (what its samples and ``engine.load`` use by default); else ``averaged`` is None.
    The EMA is read-only to training, so the raw weights of a run with ``ema_decay``
    are bit-identical to a run without it (``tests/engine/test_toolkit.py``).
    """
    result = run_engine(ctx, *args, **kwargs)
    assert result.checkpoint is not None
    trained, averaged = load_trained(ctx, result.config.model, checkpoint.load(result.checkpoint))
    return trained, result.metrics, averaged


def load_trained(ctx: Context, model: ModelSection, state: dict[str, Any]) -> tuple[engine.Model, engine.Model | None]:
    """``(raw, averaged)`` models built from a checkpoint's ``state`` (``averaged`` is None without EMA weights)."""

    def build() -> engine.Model:
        # Building the model draws initial weights: keep the global RNG as it was.
        with using(ctx.pm), torch.random.fork_rng(devices=[]):
            built = ctx.pm.models.get(model.name).obj(model.params, ctx.spec)
        built.load_state_dict(state["model"])
        return built.eval()

    trained, averaged = build(), None
    if state.get("ema"):
        averaged = build()
        for sub, weights in state["ema"].items():
            getattr(averaged, sub).load_state_dict(weights)
    return trained, averaged


def build_plugin_model(ctx: Context, name: str, fields: dict[str, Any]) -> engine.Model:
    """A registry model with ``fields``, as the engine builds it (for the references' nets)."""
    config = engine.resolve({"model": {"name": name, **fields}, "data": ctx.data}, ctx.pm)
    with using(ctx.pm):
        return ctx.pm.models.get(name).obj(config.model.params, ctx.spec)


# ---------------------------------------------------------------------------
# reference 1: the pytorch/examples VAE
# ---------------------------------------------------------------------------


class RefVAE(nn.Module):
    """pytorch/examples ``vae/main.py``: 784-400-20 with separate mean and log-variance heads."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(784, 400)
        self.fc21 = nn.Linear(400, 20)
        self.fc22 = nn.Linear(400, 20)
        self.fc3 = nn.Linear(20, 400)
        self.fc4 = nn.Linear(400, 784)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h1 = F.relu(self.fc1(x.view(-1, 784)))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu: Tensor, logvar: Tensor) -> Tensor:
        std = torch.exp(0.5 * logvar)
        eps = torch.randn_like(std)
        return mu + eps * std

    def decode(self, z: Tensor) -> Tensor:
        """Logits of the Bernoulli decoder (the example applies ``sigmoid`` in :meth:`forward`)."""
        return self.fc4(F.relu(self.fc3(z)))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar)
        return torch.sigmoid(self.decode(z)), mu, logvar

    # what engine.metrics needs
    def log_likelihood(self, x: Tensor, logits: Tensor) -> Tensor:
        return -F.binary_cross_entropy_with_logits(logits, x.view(-1, 784), reduction="none").sum(1)

    def reconstruct(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.decode(self.encode(x)[0])).view_as(x)


def ref_vae_loss(recon_x: Tensor, x: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """pytorch/examples: reconstruction + KL divergence summed over all elements and the batch."""
    bce = F.binary_cross_entropy(recon_x, x.view(-1, 784), reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return bce + kld


def train_ref_vae(ctx: Context, s: Settings, seed: int) -> RefVAE:
    torch.set_num_threads(ctx.threads)
    torch.manual_seed(seed)
    model = RefVAE()
    optimizer = torch.optim.Adam(model.parameters(), lr=s.lr)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(s.vae_epochs):
        for idx in epochs_of(ctx.train.images, s.batch, gen):
            data = to_float(ctx.train.images[idx])
            optimizer.zero_grad()
            recon_batch, mu, logvar = model(data)
            loss = ref_vae_loss(recon_batch, data, mu, logvar)
            loss.backward()
            optimizer.step()
    return model.eval()


# ---------------------------------------------------------------------------
# reference 2: the autoencoder
# ---------------------------------------------------------------------------


class RefAE(nn.Module):
    """784-400-20-400-784, ReLU, logits out: the AE plugin's ``arch=mlp`` default."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(784, 400), nn.ReLU(), nn.Linear(400, 20))
        self.decoder = nn.Sequential(nn.Linear(20, 400), nn.ReLU(), nn.Linear(400, 784))

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x)).view_as(x)

    def reconstruct(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self(x))

    def decode_images(self, z: Tensor) -> Tensor:
        return torch.sigmoid(self.decoder(z)).view(-1, 1, 28, 28)


def train_ref_ae(ctx: Context, s: Settings, seed: int) -> RefAE:
    torch.set_num_threads(ctx.threads)
    torch.manual_seed(seed)
    model = RefAE()
    optimizer = torch.optim.Adam(model.parameters(), lr=s.lr)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(s.ae_epochs):
        for idx in epochs_of(ctx.train.images, s.batch, gen):
            x = to_float(ctx.train.images[idx])
            # The AE plugin's bce: on logits, summed over pixels, averaged over the batch.
            loss = F.binary_cross_entropy_with_logits(model(x), x, reduction="none").flatten(1).sum(1).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


# ---------------------------------------------------------------------------
# reference 3: the GAN, a hand-written loop over the plugin's nets
# ---------------------------------------------------------------------------


def train_ref_gan(
    ctx: Context, s: Settings, seed: int, fields: dict[str, Any], lr: float | None = None
) -> engine.Model:
    """The plugin's Generator and Discriminator trained by a plain non-saturating GAN loop.

    Returns the GAN model object holding them, so its ``sample`` maps to ``[0, 1]``
    exactly as the engine's does.
    """
    torch.set_num_threads(ctx.threads)
    torch.manual_seed(seed)
    gan = build_plugin_model(ctx, "gan", fields)
    gen_net, disc_net = gan.gen, gan.disc
    latent = gan.config.latent_dim
    conditional = gan.config.conditional
    lr = s.gan_lr if lr is None else lr
    opt_g = torch.optim.Adam(gen_net.parameters(), lr=lr, betas=s.gan_betas)
    opt_d = torch.optim.Adam(disc_net.parameters(), lr=lr, betas=s.gan_betas)
    order = torch.Generator().manual_seed(seed)
    gan.train()
    for _ in range(s.cgan_epochs if conditional else s.gan_epochs):
        for idx in epochs_of(ctx.train.images, s.gan_batch, order):
            real = to_float(ctx.train.images[idx]) * 2.0 - 1.0
            y = ctx.train.labels[idx] if conditional else None
            ones, zeros = torch.ones(len(idx)), torch.zeros(len(idx))
            fake = gen_net(torch.randn(len(idx), latent), y)
            # (1) D: maximise log D(x) + log(1 - D(G(z)))
            opt_d.zero_grad()
            loss_d = F.binary_cross_entropy_with_logits(disc_net(real, y), ones) + F.binary_cross_entropy_with_logits(
                disc_net(fake.detach(), y), zeros
            )
            loss_d.backward()
            opt_d.step()
            # (2) G: maximise log D(G(z)) (non-saturating)
            opt_g.zero_grad()
            loss_g = F.binary_cross_entropy_with_logits(disc_net(fake, y), ones)
            loss_g.backward()
            opt_g.step()
    return gan.eval()


# ---------------------------------------------------------------------------
# results and the table
# ---------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the table: per-seed figures of both sides and how the ratio is judged."""

    metric: str
    engine: list[float] = field(default_factory=list)
    reference: list[float] = field(default_factory=list)
    target: str = "info"
    check: Callable[[float], bool] | None = None  # on the mean ratio (or the mean engine figure)
    on_ratio: bool = True
    floor: list[float] = field(default_factory=list)
    missing: str = ""  # what met? says when there is nothing to judge

    def add(self, engine: float, reference: float, floor: float | None = None) -> None:
        """One seed's figures."""
        self.engine.append(engine)
        self.reference.append(reference)
        if floor is not None:
            self.floor.append(floor)

    def ratios(self) -> list[float]:
        return [e / r if r else math.nan for e, r in zip(self.engine, self.reference, strict=True)]

    def met(self) -> str:
        if self.check is None:
            return "-"
        values = self.ratios() if self.on_ratio else self.engine
        if not values:
            return self.missing or "-"
        if any(math.isnan(v) for v in values):
            return "not met (withheld: the classifiers disagree)"  # an untrusted figure meets no bar
        mean = statistics.fmean(values)
        if self.check(mean):
            return "met"
        if len(values) > 1:
            half = T_975.get(len(values) - 1, 2.0) * statistics.stdev(values) / math.sqrt(len(values))
            if self.check(mean - half) or self.check(mean + half):
                return "noise"
        return "not met"


def finite(values: list[float]) -> list[float]:
    return [v for v in values if not math.isnan(v)]


def withheld(values: list[float]) -> str:
    """`` (k of n withheld)`` when some per-seed figures are NaN (the classifiers disagreed), else ``""``."""
    k = len(values) - len(finite(values))
    return f" ({k} of {len(values)} withheld)" if k else ""


def mean_sd(values: list[float], digits: int = 4) -> str:
    if not values:
        return "-"
    kept = finite(values)
    if not kept:
        return "withheld"
    m = statistics.fmean(kept)
    if len(set(kept)) == 1:
        return f"{m:.{digits}g}" + withheld(values)
    return f"{m:.{digits}g} ± {statistics.stdev(kept):.2g}" + withheld(values)


def ratio_text(values: list[float]) -> str:
    if not values:
        return "-"
    kept = finite(values)
    if not kept:
        return "withheld"
    m = statistics.fmean(kept)
    if len(kept) == 1:
        return f"{m:.3f}" + withheld(values)
    return f"{m:.3f} ± {statistics.stdev(kept):.3f} [{min(kept):.3f}, {max(kept):.3f}]" + withheld(values)


def print_table(rows: list[Row]) -> None:
    header = ("metric", "engine", "reference", "ratio (mean ± sd [min, max])", "target", "met?", "real floor")
    lines = [
        (
            r.metric,
            mean_sd(r.engine),
            mean_sd(r.reference),
            ratio_text(r.ratios()) if r.reference else "-",
            r.target,
            r.met(),
            mean_sd(r.floor) if r.floor else "",
        )
        for r in rows
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    print(fmt.format(*header))
    print(fmt.format(*("-" * w for w in widths)))
    for line in lines:
        print(fmt.format(*line).rstrip())


# ---------------------------------------------------------------------------
# PNG grids
# ---------------------------------------------------------------------------


def grid_array(images: Tensor, ncol: int, pad: int = 2) -> np.ndarray:
    """Grey images ``N×1×H×W`` in ``[0, 1]`` tiled ``ncol`` per row on a mid-grey background."""
    images = images.detach().float().clamp(0, 1).cpu()[:, 0]
    n, h, w = images.shape
    nrow = math.ceil(n / ncol)
    grid = torch.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad), 0.5)
    for i in range(n):
        r, c = divmod(i, ncol)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = images[i]
    return (grid.numpy() * 255).round().astype(np.uint8)


def save_panels(path: Path, panels: list[tuple[str, Tensor, int]], scale: int = 2) -> None:
    """Grids side by side, each under its title, scaled up ``scale`` times (nearest neighbour)."""
    from PIL import Image, ImageDraw

    tiles = []
    for _, images, ncol in panels:
        a = grid_array(images, ncol)
        tiles.append(Image.fromarray(a, mode="L").resize((a.shape[1] * scale, a.shape[0] * scale), Image.NEAREST))
    title_h, gap = 16, 16
    width = sum(t.width for t in tiles) + gap * (len(tiles) - 1)
    canvas = Image.new("L", (width, title_h + max(t.height for t in tiles)), 255)
    draw = ImageDraw.Draw(canvas)
    x = 0
    for (title, _, _), tile in zip(panels, tiles, strict=True):
        draw.text((x + 2, 2), title, fill=0)
        canvas.paste(tile, (x, title_h))
        x += tile.width + gap
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


# ---------------------------------------------------------------------------
# the parts
# ---------------------------------------------------------------------------


class Clock:
    """Wall time per part and side, printed at the end."""

    def __init__(self) -> None:
        self.parts: dict[str, dict[str, float]] = {}

    def add(self, part: str, side: str, seconds: float) -> None:
        d = self.parts.setdefault(part, {})
        d[side] = d.get(side, 0.0) + seconds

    def timed(self, part: str, side: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        try:
            return fn()
        finally:
            self.add(part, side, time.perf_counter() - t0)


def part_classifier(ctx: Context, clock: Clock, cache_dir: Path | None) -> None:
    t0 = time.perf_counter()
    ctx.pair = ClassifierPair.for_dataset(
        "mnist-test-split0-train9000", ctx.train.images, ctx.train.labels, 10, cache_dir=cache_dir
    )
    ctx.clf = ctx.pair.main
    clock.add("classifier", "train or load", time.perf_counter() - t0)
    held_acc = class_accuracy(ctx.clf, ctx.held.images, ctx.held.labels)
    check_acc = class_accuracy(ctx.pair.check_classifier, ctx.held.images, ctx.held.labels)
    print(
        f"feature classifier: accuracy {ctx.clf.val_accuracy:.4f} on its own validation part of the training images, "
        f"{held_acc:.4f} on the 1,000 held-out images; check classifier {check_acc:.4f} "
        f"(they disagree by TV {ctx.pair.disagreement(ctx.held.images):.3f} on them; figures are withheld above "
        f"{ctx.pair.max_disagreement:.2f}) ({time.perf_counter() - t0:.1f} s)",
        flush=True,
    )


def part_vae(ctx: Context, s: Settings, clock: Clock) -> list[Row]:
    nelbo = Row("VAE held-out -ELBO (nats/image)", target="ratio <= 1.00", check=lambda r: r <= 1.0)
    iwae = Row("VAE held-out IWAE k=50 bound (nats/image)")
    fd = Row("VAE samples Frechet (n=1000)")
    held = ctx.held.images
    optim = {"algo": "adam", "lr": s.lr}
    for seed in s.seeds:
        model, metrics, _ = clock.timed(
            "VAE", "engine", lambda seed=seed: fit_engine(ctx, {"name": "vae"}, optim, s.vae_epochs, s.batch, seed)
        )
        ref = clock.timed("VAE", "reference", lambda seed=seed: train_ref_vae(ctx, s, seed))
        t0 = time.perf_counter()
        z = fixed_noise(N_SAMPLES, 20)
        with torch.no_grad():
            samples = [torch.sigmoid(m.decode(z)).view(-1, 1, 28, 28) for m in (model, ref)]
        for row, e, r in (
            (nelbo, elbo(model, held, samples=10, seed=EVAL_SEED), elbo(ref, held, samples=10, seed=EVAL_SEED)),
            (iwae, iwae_bound(model, held, k=50, seed=EVAL_SEED), iwae_bound(ref, held, k=50, seed=EVAL_SEED)),
        ):
            row.engine.append(e)
            row.reference.append(r)
        (fe, floor), (fr, _) = ctx.frechet(samples[0]), ctx.frechet(samples[1])
        fd.engine.append(fe)
        fd.reference.append(fr)
        fd.floor.append(floor)
        clock.add("VAE", "evaluation", time.perf_counter() - t0)
        print(
            f"  VAE seed {seed}: -ELBO engine {nelbo.engine[-1]:.2f} (its own val/elbo {metrics['val/elbo']:.2f}), "
            f"reference {nelbo.reference[-1]:.2f}; IWAE engine {iwae.engine[-1]:.2f}, "
            f"reference {iwae.reference[-1]:.2f}",
            flush=True,
        )
        if seed == s.seeds[0]:
            x = held[:32]
            with torch.no_grad():
                rec = [m.reconstruct(to_float(x)) for m in (model, ref)]
            save_panels(
                ctx.out / "vae_samples.png",
                [("engine VAE", samples[0][:64], 8), ("reference VAE", samples[1][:64], 8)],
            )
            save_panels(
                ctx.out / "vae_reconstructions.png",
                [("held-out", to_float(x), 4), ("engine VAE", rec[0], 4), ("reference VAE", rec[1], 4)],
            )
    return [nelbo, iwae, fd]


def part_ae(ctx: Context, s: Settings, clock: Clock) -> list[Row]:
    mse = Row("AE held-out squared error (sum over pixels/image)", target="ratio <= 1.00", check=lambda r: r <= 1.0)
    fd = Row("AE decoded N(0,I) samples Frechet (n=1000)")
    held = ctx.held.images
    optim = {"algo": "adam", "lr": s.lr}
    for seed in s.seeds:
        model, _, _ = clock.timed(
            "AE", "engine", lambda seed=seed: fit_engine(ctx, {"name": "ae"}, optim, s.ae_epochs, s.batch, seed)
        )
        ref = clock.timed("AE", "reference", lambda seed=seed: train_ref_ae(ctx, s, seed))
        t0 = time.perf_counter()
        mse.engine.append(reconstruction_error(model, held))
        mse.reference.append(reconstruction_error(ref, held))
        z = fixed_noise(N_SAMPLES, 20)
        with torch.no_grad():
            samples = [torch.sigmoid(model.decode(z)), ref.decode_images(z)]
        (fe, floor), (fr, _) = ctx.frechet(samples[0]), ctx.frechet(samples[1])
        fd.engine.append(fe)
        fd.reference.append(fr)
        fd.floor.append(floor)
        clock.add("AE", "evaluation", time.perf_counter() - t0)
        print(f"  AE seed {seed}: MSE engine {mse.engine[-1]:.3f}, reference {mse.reference[-1]:.3f}", flush=True)
        if seed == s.seeds[0]:
            x = to_float(held[:32])
            with torch.no_grad():
                rec = [model.reconstruct(x), ref.reconstruct(x)]
            save_panels(
                ctx.out / "ae_reconstructions.png",
                [("held-out", x, 4), ("engine AE", rec[0], 4), ("reference AE", rec[1], 4)],
            )
    return [mse, fd]


def part_gan(ctx: Context, s: Settings, clock: Clock) -> list[Row]:
    """The MLP GAN against the hand-written loop over the same nets (parity)."""
    fields: dict[str, Any] = {"arch": "mlp", "loss": "nonsaturating"}
    optim = {"algo": "adam", "lr": s.gan_lr, "betas": list(s.gan_betas)}
    fd = Row("MLP GAN samples Frechet (n=1000)", target="ratio <= 1.00", check=lambda r: r <= 1.0)
    for seed in s.seeds:
        model, _, _ = clock.timed(
            "GAN",
            "engine",
            lambda seed=seed: fit_engine(ctx, {"name": "gan", **fields}, optim, s.gan_epochs, s.gan_batch, seed),
        )
        ref = clock.timed("GAN", "reference", lambda seed=seed: train_ref_gan(ctx, s, seed, fields))
        t0 = time.perf_counter()
        z = fixed_noise(N_SAMPLES, model.config.latent_dim)
        with torch.no_grad():
            samples = [m.sample(N_SAMPLES, z=z) for m in (model, ref)]
        (fe, floor), (fr, _) = ctx.frechet(samples[0]), ctx.frechet(samples[1])
        fd.engine.append(fe)
        fd.reference.append(fr)
        fd.floor.append(floor)
        clock.add("GAN", "evaluation", time.perf_counter() - t0)
        print(f"  MLP GAN seed {seed}: Frechet engine {fe:.2f}, reference {fr:.2f} (floor {floor:.2f})", flush=True)
        if seed == s.seeds[0]:
            real = to_float(ctx.held.images[:64])
            save_panels(
                ctx.out / "gan_samples.png",
                [("held-out real", real, 8), ("engine MLP GAN", samples[0][:64], 8), ("reference", samples[1][:64], 8)],
            )
    return [fd]


def recipe_fields(s: Settings, config: dict[str, Any]) -> dict[str, Any]:
    """A recipe's model section, with ``--smoke``'s small conv nets and ``--model-set``'s fields."""
    return {**config["model"], **({"channels": s.channels} if s.channels else {}), **dict(s.model_set)}


def smallest_share(ctx: Context, images: Tensor) -> float:
    """The share of ``images`` in their rarest class, by the feature classifier (every digit ≥ 5%: ≥ 0.05)."""
    assert ctx.clf is not None
    return float(class_histogram(ctx.clf, images).min())


@dataclass
class RawAndEMA:
    """Samples of a model's raw and EMA weights from the same noise, and their sample reports."""

    samples: Tensor
    ema_samples: Tensor
    raw: dict[str, Any]  # engine.metrics.sample_report of the raw weights' samples
    ema: dict[str, Any]
    raw_share: float  # the rarest digit's share (NaN where the classifiers disagree)
    ema_share: float


def raw_and_ema(ctx: Context, raw: engine.Model, averaged: engine.Model | None) -> RawAndEMA:
    """:class:`RawAndEMA` of ``N_SAMPLES`` samples from the fixed noise."""
    assert averaged is not None, "the checkpoint of a run with trainer.ema_decay has no EMA weights"
    z = fixed_noise(N_SAMPLES, raw.config.latent_dim)
    with torch.no_grad():
        samples, ema_samples = raw.sample(N_SAMPLES, z=z), averaged.sample(N_SAMPLES, z=z)
    r, re = ctx.report(samples), ctx.report(ema_samples)

    def share(report: dict[str, Any], images: Tensor) -> float:
        return math.nan if report["reason"] is not None else smallest_share(ctx, images)

    return RawAndEMA(samples, ema_samples, r, re, share(r, samples), share(re, ema_samples))


def dcgan_ema_decay(s: Settings) -> float:
    """The DCGAN part's ``trainer.ema_decay``: ``--ema-decay``, else the recipe's, else 0.999."""
    return s.ema_decay or float(recipe("gan_mnist")["trainer"].get("ema_decay", 0.999))


def part_dcgan(ctx: Context, s: Settings, clock: Clock) -> list[Row]:
    """``recipes/gan_mnist.py`` for 20 epochs with ``trainer.ema_decay``: the EMA bar. Its raw weights are the DCGAN
    without EMA, its EMA weights the same GAN with it (one run gives both: the EMA never feeds back into training).

    The batch is the recipe's global one (64 × 2 workers: each optimizer step averages 128
    images' gradients), as in :func:`part_dcgan_steps`; ``--dcgan-batch 64`` gives the one
    worker's batch that this part used before (2,800 steps of 64 where the default is 1,400 of 128).
    """
    cfg = recipe("gan_mnist")
    fields, optim = recipe_fields(s, cfg), cfg["optim"]
    batch = s.dcgan_batch or recipe_steps(cfg, len(ctx.train))[0]
    decay = dcgan_ema_decay(s)
    ema = Row(
        f"DCGAN {s.dcgan_epochs} epochs of {batch} + EMA samples Frechet (n={N_LARGE:,} vs all training images); "
        "reference = the same run's raw weights",
        target="ratio <= 0.80",
        check=lambda r: r <= 0.8,
    )
    ema_small = Row(f"DCGAN + EMA samples Frechet (n={N_SAMPLES:,}); reference = the same run's raw weights")
    # The score and coverage bars are on the recipe's own budget (part_dcgan_steps); here they are information.
    score = Row("DCGAN 20 epochs classifier score, raw weights (n=1000); reference = real held-out")
    share = Row("DCGAN 20 epochs rarest digit's share, raw weights; reference = real held-out")
    fd = Row("DCGAN 20 epochs samples Frechet, raw weights (n=1000); reference = real held-out")
    ema_score = Row("DCGAN + EMA classifier score; reference = the raw weights'")
    ema_share = Row("DCGAN + EMA rarest digit's share; reference = the raw weights'")
    for seed in s.seeds:
        raw, _, averaged = clock.timed(
            "DCGAN",
            "engine (EMA kept)",
            lambda seed=seed: fit_engine(ctx, fields, optim, s.dcgan_epochs, batch, seed, {"ema_decay": decay}),
        )
        t0 = time.perf_counter()
        d = raw_and_ema(ctx, raw, averaged)
        r, re = d.raw, d.ema
        score.add(r["classifier_score"], r["real_classifier_score"])
        share.add(d.raw_share, smallest_share(ctx, ctx.held.images))
        fd.add(r["frechet"], r["real_frechet"])
        ema_small.add(re["frechet"], r["frechet"], r["real_frechet"])
        assert averaged is not None
        z = fixed_noise(N_LARGE, raw.config.latent_dim, seed=EVAL_SEED + 1)
        with torch.no_grad():  # in chunks: 9,000 images' activations at once would take gigabytes
            (big, floor), (ema_big, _) = (
                ctx.frechet_large(torch.cat([m.sample(len(c), z=c) for c in z.split(N_SAMPLES)]))
                for m in (raw, averaged)
            )
        ema.add(ema_big, big, floor)
        ema_score.add(re["classifier_score"], r["classifier_score"])
        ema_share.add(d.ema_share, d.raw_share)
        clock.add("DCGAN", "evaluation", time.perf_counter() - t0)
        print(
            f"  DCGAN seed {seed}: raw weights: classifier score {r['classifier_score']:.2f} "
            f"(real {r['real_classifier_score']:.2f}), rarest digit {d.raw_share:.3f}, Frechet {r['frechet']:.2f} "
            f"(real {r['real_frechet']:.2f}); EMA: score {re['classifier_score']:.2f}, rarest digit "
            f"{d.ema_share:.3f}, Frechet {re['frechet']:.2f}; classifiers' disagreement "
            f"{r['classifier_disagreement']:.3f} / {re['classifier_disagreement']:.3f}; n={N_LARGE:,}: Frechet raw "
            f"{big:.2f}, EMA {ema_big:.2f} (held-out 1,000 against the same 9,000: {floor:.2f})",
            flush=True,
        )
        if seed == s.seeds[0]:
            save_panels(
                ctx.out / "dcgan_samples.png",
                [("DCGAN raw weights", d.samples[:64], 8), ("DCGAN EMA weights (same noise)", d.ema_samples[:64], 8)],
            )
    return [ema, ema_small, score, share, fd, ema_score, ema_share]


MNIST_TRAIN_IMAGES = 60_000
"""The MNIST training set the recipes train on (``data.split=train``)."""


def recipe_steps(cfg: dict[str, Any], n_train: int) -> tuple[int, int, int]:
    """``(global batch, epochs here, the recipe's optimizer steps)``: the recipe's budget over ``n_train`` images.

    The recipe's global batch is ``trainer.batch_size × scaling.num_workers``; its
    steps are its epochs over the training images its ``data.val_fraction`` leaves of
    MNIST's 60,000, whole batches only, as the engine's loader takes them.
    """
    batch = cfg["trainer"]["batch_size"] * max(1, cfg.get("scaling", {}).get("num_workers", 1))
    train = MNIST_TRAIN_IMAGES - round(MNIST_TRAIN_IMAGES * cfg["data"].get("val_fraction", 0.1))
    steps = cfg["trainer"]["epochs"] * (train // batch)
    return batch, max(1, round(steps / (n_train // batch))), steps


def part_dcgan_steps(ctx: Context, s: Settings, clock: Clock) -> list[Row]:
    """``recipes/gan_mnist.py`` at its own budget: its global batch and optimizer steps, over the 9,000 images here.

    What ``python recipes/gan_mnist.py`` trains (10 epochs of 54,000 images, 2 workers × 64) is
    4,210 steps of 128 images; the 20 epochs of :func:`part_dcgan` are 2,800 of 64. Its samples are
    what ``engine.load`` draws by default, the EMA weights' (``trainer.ema_decay``), and they
    carry the bars; the raw weights' are shown too. A checkpoint every third of the run
    prints the figures on the way (the last is the bar's).
    """
    cfg = recipe("gan_mnist")
    fields, optim = recipe_fields(s, cfg), cfg["optim"]
    batch, epochs, steps = recipe_steps(cfg, len(ctx.train))
    epochs = s.dcgan_steps_epochs or epochs
    decay = float(cfg["trainer"].get("ema_decay", 0.999)) if s.ema_decay is None else s.ema_decay
    what = f"DCGAN (recipe, its {steps:,} steps of {batch})"
    score = Row(
        f"{what} classifier score, EMA (engine.load's) samples; reference = real held-out",
        target="engine >= 8.0",
        check=lambda v: v >= 8.0,
        on_ratio=False,
    )
    share = Row(
        f"{what} rarest digit's share, EMA samples; reference = real held-out",
        target="engine >= 0.05",
        check=lambda v: v >= 0.05,
        on_ratio=False,
    )
    fd = Row(f"{what} EMA samples Frechet (n=1000); reference = real held-out")
    raw_score = Row(f"{what} classifier score, raw weights; reference = the EMA weights'")
    raw_fd = Row(f"{what} raw weights' Frechet; reference = the EMA weights'")
    print(f"  {what}: {epochs} epochs of {len(ctx.train)} images here, {epochs * (len(ctx.train) // batch):,} steps")
    for seed in s.seeds:
        result = clock.timed(
            "DCGAN steps",
            "engine (EMA kept)",
            lambda seed=seed: run_engine(
                ctx,
                fields,
                optim,
                epochs,
                batch,
                seed,
                {"ema_decay": decay, "checkpoint_every": max(1, epochs // 3), "keep_checkpoints": 3},
            ),
        )
        assert result.checkpoint is not None
        t0 = time.perf_counter()
        for path in checkpoint.list_checkpoints(result.checkpoint.parent):
            state = checkpoint.load(path)
            d = raw_and_ema(ctx, *load_trained(ctx, result.config.model, state))
            r, re = d.raw, d.ema
            print(
                f"  DCGAN seed {seed}, epoch {state['epoch']}, step {state['step']}: EMA: classifier score "
                f"{re['classifier_score']:.2f} (real {re['real_classifier_score']:.2f}), rarest digit "
                f"{d.ema_share:.3f}, Frechet {re['frechet']:.2f} (real {re['real_frechet']:.2f}); raw weights: score "
                f"{r['classifier_score']:.2f}, Frechet {r['frechet']:.2f}; classifiers' disagreement "
                f"{re['classifier_disagreement']:.3f} / {r['classifier_disagreement']:.3f}",
                flush=True,
            )
        # the loop ends on the last checkpoint: the run's end, which the bars are on
        score.add(re["classifier_score"], re["real_classifier_score"])
        share.add(d.ema_share, smallest_share(ctx, ctx.held.images))
        fd.add(re["frechet"], re["real_frechet"], re["real_frechet"])
        raw_score.add(r["classifier_score"], re["classifier_score"])
        raw_fd.add(r["frechet"], re["frechet"])
        clock.add("DCGAN steps", "evaluation", time.perf_counter() - t0)
        if seed == s.seeds[0]:
            save_panels(
                ctx.out / "dcgan_steps_samples.png",
                [("EMA weights (engine.load)", d.ema_samples[:64], 8), ("raw weights (same noise)", d.samples[:64], 8)],
            )
    return [score, share, fd, raw_score, raw_fd]


def pixel_spread(images: Tensor, labels: Tensor) -> float:
    """Mean over classes of the per-pixel std of the images of that class (z ignored: 0)."""
    flat = images.reshape(len(images), -1)
    return statistics.fmean(float(flat[labels == c].std(0).mean()) for c in labels.unique().tolist())


def part_cgan(ctx: Context, s: Settings, clock: Clock) -> list[Row]:
    """``recipes/cgan_mnist.py`` at its epochs: label accuracy and within-class spread."""
    cfg = recipe("cgan_mnist")
    fields, optim, batch = recipe_fields(s, cfg), cfg["optim"], cfg["trainer"]["batch_size"]
    acc = Row(
        "cGAN (recipe) label accuracy (samples classified as the requested digit)",
        target="engine >= 0.95",
        check=lambda a: a >= 0.95,
        on_ratio=False,
    )
    spread = Row(
        "cGAN (recipe) within-class pixel spread; reference = real held-out",
        target="ratio >= 0.80",
        check=lambda r: r >= 0.8,
    )
    feature_spread = Row("cGAN within-class classifier-feature spread; reference = real held-out")
    fd = Row("cGAN samples Frechet (n=1000)")
    # The unconditional DCGAN's nets with the digit as a one-hot: what they can draw when
    # they need not choose the digit themselves.
    score = Row("cGAN classifier score (n=1000); reference = real held-out")
    labels = torch.arange(N_SAMPLES) % 10
    assert ctx.clf is not None
    real_pixels = pixel_spread(to_float(ctx.held.images), ctx.held.labels)
    real_features = within_class_spread(classifier_features(ctx.clf, ctx.held.images), ctx.held.labels, 10)
    for seed in s.seeds:
        model, _, _ = clock.timed(
            "cGAN", "engine", lambda seed=seed: fit_engine(ctx, fields, optim, s.cgan_epochs, batch, seed)
        )
        t0 = time.perf_counter()
        z = fixed_noise(N_SAMPLES, model.config.latent_dim)
        with torch.no_grad():
            samples = model.sample(N_SAMPLES, labels=labels, z=z)
        r = ctx.report(samples, labels)
        acc.engine.append(r["label_accuracy"])
        spread.engine.append(pixel_spread(samples, labels))
        spread.reference.append(real_pixels)
        feature_spread.engine.append(within_class_spread(classifier_features(ctx.clf, samples), labels, 10))
        feature_spread.reference.append(real_features)
        fd.engine.append(r["frechet"])
        fd.floor.append(r["real_frechet"])
        score.engine.append(r["classifier_score"])
        score.reference.append(r["real_classifier_score"])
        clock.add("cGAN", "evaluation", time.perf_counter() - t0)
        print(
            f"  cGAN seed {seed}: label accuracy {acc.engine[-1]:.3f}, within-class pixel spread "
            f"{spread.engine[-1]:.3f} (real {real_pixels:.3f}), Frechet {fd.engine[-1]:.2f}, classifier score "
            f"{score.engine[-1]:.2f} (real {score.reference[-1]:.2f})",
            flush=True,
        )
        if seed == s.seeds[0]:
            grid_labels = torch.arange(100) // 10  # 10 × 10: row r asks for digit r
            zz = fixed_noise(100, model.config.latent_dim, seed=EVAL_SEED + 1)
            with torch.no_grad():
                grid = model.sample(100, labels=grid_labels, z=zz)
            save_panels(ctx.out / "cgan_samples.png", [("cGAN recipe (row r = digit r)", grid, 10)])
    return [acc, spread, feature_spread, fd, score]


def part_aegan(ctx: Context, s: Settings, clock: Clock) -> list[Row]:
    """``recipes/aegan_mnist.py`` against the same recipe with ``adv_weight=0`` (the adversary must matter)."""
    cfg = recipe("aegan_mnist")
    fields, optim, batch = recipe_fields(s, cfg), cfg["optim"], cfg["trainer"]["batch_size"]
    fd = Row(
        "AE-GAN (recipe) decoded N(0,I) Frechet; reference = adv_weight=0",
        target="ratio <= 0.80",
        check=lambda r: r <= 0.8,
    )
    mse = Row(
        "AE-GAN (recipe) held-out squared error; reference = adv_weight=0",
        target="ratio <= 1.10",
        check=lambda r: r <= 1.10,
    )
    grad_share = Row("AE-GAN adversary's share of the decoder's last-layer gradient (last epoch)")
    # Where either side's samples fail the agreement check (an undertrained adversary-free
    # baseline's faint strokes did), the bar's ratio is withheld; these rows give the same
    # Frechet distances without the check, in each classifier's own features, so the reader
    # sees whether two independent feature spaces tell the same story. Information, never a bar.
    ungated = [
        Row(f"AE-GAN decoded N(0,I) Frechet, ungated, {which} features; reference = adv_weight=0")
        for which in ("feature classifier's", "check classifier's")
    ]
    for seed in s.seeds:
        model, metrics, _ = clock.timed(
            "AE-GAN", "engine", lambda seed=seed: fit_engine(ctx, fields, optim, s.aegan_epochs, batch, seed)
        )
        off, _, _ = clock.timed(
            "AE-GAN",
            "adv_weight=0",
            lambda seed=seed: fit_engine(ctx, {**fields, "adv_weight": 0.0}, optim, s.aegan_epochs, batch, seed),
        )
        t0 = time.perf_counter()
        z = fixed_noise(N_SAMPLES, model.config.latent_dim)
        with torch.no_grad():
            samples, off_samples = model.sample(N_SAMPLES, z=z), off.sample(N_SAMPLES, z=z)
        (fe, floor), (fo, _) = ctx.frechet(samples), ctx.frechet(off_samples)
        fd.engine.append(fe)
        fd.reference.append(fo)
        fd.floor.append(floor)
        assert ctx.pair is not None
        for row, clf in zip(ungated, (ctx.pair.main, ctx.pair.check_classifier), strict=True):
            on, off_r = (
                frechet_report(clf, x, ctx.train.images, ctx.held.images, seed=EVAL_SEED)
                for x in (samples, off_samples)
            )
            row.engine.append(on["frechet"])
            row.reference.append(off_r["frechet"])
            row.floor.append(on["frechet_real_floor"])
        mse.engine.append(reconstruction_error(model, ctx.held.images))
        mse.reference.append(reconstruction_error(off, ctx.held.images))
        grad_share.engine.append(metrics.get("train/ae/adv_grad_share", math.nan))
        clock.add("AE-GAN", "evaluation", time.perf_counter() - t0)
        print(
            f"  AE-GAN seed {seed}: decoded-prior Frechet {fe:.2f} (adv_weight=0 {fo:.2f}, floor {floor:.2f}); "
            f"squared error {mse.engine[-1]:.3f} (adv_weight=0 {mse.reference[-1]:.3f}); adversary's gradient "
            f"share {grad_share.engine[-1]:.2f}",
            flush=True,
        )
        if seed == s.seeds[0]:
            x = to_float(ctx.held.images[:32])
            with torch.no_grad():
                recs = [model.reconstruct(x), off.reconstruct(x)]
            save_panels(
                ctx.out / "aegan_samples.png",
                [("AE-GAN recipe: decoded N(0,I)", samples[:64], 8), ("adv_weight=0 (same z)", off_samples[:64], 8)],
            )
            save_panels(
                ctx.out / "aegan_reconstructions.png",
                [("held-out", x, 4), ("AE-GAN recipe", recs[0], 4), ("adv_weight=0", recs[1], 4)],
            )
    return [fd, *ungated, mse, grad_share]


# ---------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer epochs and seeds (a ~3 minute smoke run)")
    p.add_argument("--smoke", action="store_true", help="1 epoch of everything, 3 seeds: checks the bench runs")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds, 0..N-1 (default 3, --quick 2)")
    p.add_argument(
        "--seed-list",
        default=None,
        metavar="S,S,...",
        help="these seeds instead of 0..N-1 (one bench's seeds split over processes that run side by side)",
    )
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads on both sides (default 1)")
    p.add_argument("--mnist", type=Path, default=MNIST_ROOT, help="directory with the MNIST test files")
    p.add_argument("--out", type=Path, default=OUT_DIR, help="where the PNG grids go")
    p.add_argument("--cache-dir", type=Path, default=None, help="classifier cache (default engine.metrics')")
    p.add_argument(
        "--runs",
        type=Path,
        default=None,
        help="keep the engine's run directories (checkpoints) here (default: a temporary directory)",
    )
    p.add_argument(
        "--parts",
        default="vae,ae,gan,dcgan,dcgan_steps,cgan,aegan",
        help="comma-separated subset of vae,ae,gan,dcgan,dcgan_steps,cgan,aegan",
    )
    p.add_argument(
        "--model-set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="a model field (YAML value) laid over the recipes' (dcgan, cgan, aegan), e.g. codes=10 or\n"
        "augment=[translation,cutout]: a variant on the same bars; repeatable",
    )
    p.add_argument(
        "--dcgan-batch",
        type=int,
        default=None,
        help="batch of the DCGAN part (default: the recipe's global batch, batch_size x num_workers)",
    )
    p.add_argument(
        "--ema-decay",
        type=float,
        default=None,
        help="trainer.ema_decay of the DCGAN part (default: the recipe's; the warm-up ramp applies)",
    )
    args = p.parse_args(argv)
    s = SMOKE if args.smoke else QUICK if args.quick else FULL
    if args.ema_decay is not None:
        if not 0 < args.ema_decay < 1:
            p.error(f"--ema-decay must be between 0 and 1 (exclusive), got {args.ema_decay}")
        s = dataclasses.replace(s, ema_decay=args.ema_decay)
    if args.dcgan_batch is not None:
        if args.dcgan_batch < 1:
            p.error(f"--dcgan-batch must be a positive integer, got {args.dcgan_batch}")
        s = dataclasses.replace(s, dcgan_batch=args.dcgan_batch)
    if args.model_set:
        pairs = [item.partition("=") for item in args.model_set]
        if bad := [k for k, eq, _ in pairs if not eq or not k]:
            p.error(f"--model-set takes FIELD=VALUE, got {bad[0]!r}")
        s = dataclasses.replace(s, model_set=tuple((k, yaml.safe_load(v)) for k, _, v in pairs))
    if args.seeds is not None:
        s = dataclasses.replace(s, seeds=tuple(range(args.seeds)))
    if args.seed_list is not None:
        try:
            s = dataclasses.replace(s, seeds=tuple(int(v) for v in args.seed_list.split(",")))
        except ValueError:
            p.error(f"--seed-list takes comma-separated integers, got {args.seed_list!r}")
    parts = set(args.parts.split(","))
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    print(
        f"gentrain quality bench ({'smoke' if args.smoke else 'quick' if args.quick else 'full'}): "
        f"torch {torch.__version__}, "
        f"{args.threads} thread(s), seeds {list(s.seeds)}\n"
        f"  VAE/AE {s.vae_epochs}/{s.ae_epochs} epochs, batch {s.batch}, Adam {s.lr:g}; "
        f"MLP GAN {s.gan_epochs} epochs, batch {s.gan_batch}, Adam {s.gan_lr:g} betas {s.gan_betas}; "
        f"recipes (their model, optim and batch): gan_mnist (DCGAN, EMA {dcgan_ema_decay(s)}) {s.dcgan_epochs} epochs, "
        f"cgan_mnist {s.cgan_epochs}, aegan_mnist {s.aegan_epochs}"
        + (f"; conv channels {s.channels}" if s.channels else "")
        + "".join(f"; model.{k}={v}" for k, v in s.model_set),
        flush=True,
    )
    clock = Clock()
    rows: list[Row] = []
    with contextlib.ExitStack() as stack:
        runs = args.runs or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gentrain-quality-")))
        ctx = make_context(args.mnist, args.threads, runs, args.out)
        print(f"data: MNIST test set, {len(ctx.train)} training / {len(ctx.held)} held-out images (engine split)")
        part_classifier(ctx, clock, args.cache_dir)
        for name, part in (
            ("vae", part_vae),
            ("ae", part_ae),
            ("gan", part_gan),
            ("dcgan", part_dcgan),
            ("dcgan_steps", part_dcgan_steps),
            ("cgan", part_cgan),
            ("aegan", part_aegan),
        ):
            if name in parts:
                done = part(ctx, s, clock)
                print_table(done)  # as each part ends: a later part's failure loses nothing
                print(flush=True)
                rows += done

    print()
    print_table(rows)
    print()
    print("wall time per part (s):")
    for part, sides in clock.parts.items():
        print(f"  {part:<10} " + ", ".join(f"{side} {sec:.1f}" for side, sec in sides.items()))
    print(f"  total      {time.perf_counter() - t_start:.1f}")
    print(f"grids: {args.out}/")


if __name__ == "__main__":
    main()
