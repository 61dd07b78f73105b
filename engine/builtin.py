"""The engine's own plugin: the built-in datasets and the default optimizer factory.

It is registered first, under the name ``engine``, through the same
``register`` call as every other plugin.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

import torch
from pydantic import Field

from engine.config import DataConfig, OptimConfig, PositiveInt
from engine.data import ImageData, resolve_root
from engine.hookspecs import hookimpl
from engine.registry import Registry

# ---------------------------------------------------------------------------
# datasets
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ShapesConfig:
    """Procedural dSprites-like shapes: square, ellipse, heart at random scale, rotation, position."""

    n: PositiveInt = 10_000
    size: Annotated[int, Field(ge=8, le=256)] = 32
    seed: int = 0


def shapes(config: ShapesConfig, data: DataConfig) -> ImageData:
    """Procedural shapes (no files, no network): the embedded default dataset."""
    from engine.datasets import make_shapes

    images, labels, _ = make_shapes(config.n, config.size, config.seed)
    return ImageData(images, labels, 3, "shapes")


@dataclass(frozen=True)
class MnistConfig:
    """An MNIST-family IDX dataset read from ``data.root``."""

    split: Literal["train", "test", "all"] = "train"


def _mnist_family(variant: str) -> Any:
    def factory(config: MnistConfig, data: DataConfig) -> ImageData:
        from engine.datasets import load_mnist_family

        images, labels = load_mnist_family(
            resolve_root(data, variant), variant=variant, split=config.split, download=data.download
        )
        return ImageData(images, labels, 10, variant)

    factory.__doc__ = f"{variant} (IDX files, raw or .gz) from data.root; data.download=true fetches them."
    return factory


@dataclass(frozen=True)
class Cifar10Config:
    """CIFAR-10, binary version, from ``data.root``."""

    split: Literal["train", "test"] = "train"


def cifar10(config: Cifar10Config, data: DataConfig) -> ImageData:
    """CIFAR-10 (binary batches, never pickles) from data.root; data.download=true fetches it."""
    from engine.datasets import load_cifar10

    images, labels = load_cifar10(resolve_root(data, "cifar10"), split=config.split, download=data.download)
    return ImageData(images, labels, 10, "cifar10")


@dataclass(frozen=True)
class ImageFolderConfig:
    """A folder of class sub-folders of images, resized to ``size``."""

    size: Annotated[int, Field(ge=8, le=1024)] = 64
    channels: Literal[1, 3] = 3


def image_folder(config: ImageFolderConfig, data: DataConfig) -> ImageData:
    """Images under data.root/<class>/*.png|jpg, one class per sub-folder."""
    from engine.datasets import load_image_folder

    images, labels, classes = load_image_folder(resolve_root(data, "image_folder"), config.size, config.channels)
    return ImageData(images, labels, len(classes), "image_folder")


@hookimpl
def gentrain_register_datasets(registry: Registry[Any]) -> None:
    registry.add("shapes", shapes, ShapesConfig)
    for variant in ("mnist", "fashion_mnist", "kmnist"):
        registry.add(variant, _mnist_family(variant), MnistConfig)
    registry.add("cifar10", cifar10, Cifar10Config)
    registry.add("image_folder", image_folder, ImageFolderConfig)


# ---------------------------------------------------------------------------
# optimizers
# ---------------------------------------------------------------------------


@hookimpl(trylast=True)
def gentrain_make_optimizer(name: str, params: list[torch.nn.Parameter], config: OptimConfig) -> torch.optim.Optimizer:
    if config.algo == "adam":
        return torch.optim.Adam(
            params, lr=config.lr, betas=config.betas, eps=config.eps, weight_decay=config.weight_decay
        )
    if config.algo == "adamw":
        return torch.optim.AdamW(
            params, lr=config.lr, betas=config.betas, eps=config.eps, weight_decay=config.weight_decay
        )
    if config.algo == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return torch.optim.RMSprop(
        params, lr=config.lr, momentum=config.momentum, eps=config.eps, weight_decay=config.weight_decay
    )


def apply_hyperparameters(optimizer: torch.optim.Optimizer, config: OptimConfig) -> None:
    """Write the config's hyperparameters into every param group (after loading a checkpoint).

    Hyperparameters belong to the config, not to the checkpointed state, so a
    value changed between runs (or by a PBT perturbation) takes effect on resume.
    """
    for group in optimizer.param_groups:
        group["lr"] = config.lr
        group["weight_decay"] = config.weight_decay
        if "betas" in group:
            group["betas"] = tuple(config.betas)
        if "momentum" in group:
            group["momentum"] = config.momentum
        if "eps" in group:
            group["eps"] = config.eps
