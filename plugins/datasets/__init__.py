"""The built-in datasets: procedural shapes, the MNIST family, CIFAR-10 and image folders.

A plugin like any other (entry point ``datasets``): each dataset is a
factory ``(its config, the data section) -> engine.ImageData`` registered
with its config class. The readers live in :mod:`plugins.datasets.io`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field

import engine


@dataclass(frozen=True)
class ShapesConfig:
    """Procedural dSprites-like shapes: square, ellipse, heart at random scale, rotation, position."""

    n: engine.PositiveInt = 10_000
    size: Annotated[int, Field(ge=8, le=256)] = 32
    seed: int = 0


def shapes(config: ShapesConfig, data: engine.DataConfig) -> engine.ImageData:
    """Procedural shapes (no files, no network): the embedded default dataset."""
    from plugins.datasets.io import make_shapes

    images, labels, _ = make_shapes(config.n, config.size, config.seed)
    return engine.ImageData(images, labels, 3, "shapes")


@dataclass(frozen=True)
class MnistConfig:
    """An MNIST-family IDX dataset read from ``data.root``."""

    split: Literal["train", "test", "all"] = "train"


def _mnist_family(variant: str) -> Any:
    def factory(config: MnistConfig, data: engine.DataConfig) -> engine.ImageData:
        from plugins.datasets.io import load_mnist_family

        images, labels = load_mnist_family(
            data.root_path(variant), variant=variant, split=config.split, download=data.download
        )
        return engine.ImageData(images, labels, 10, variant)

    factory.__doc__ = f"{variant} (IDX files, raw or .gz) from data.root; data.download=true fetches them."
    return factory


@dataclass(frozen=True)
class Cifar10Config:
    """CIFAR-10, binary version, from ``data.root``."""

    split: Literal["train", "test"] = "train"


def cifar10(config: Cifar10Config, data: engine.DataConfig) -> engine.ImageData:
    """CIFAR-10 (binary batches, never pickles) from data.root; data.download=true fetches it."""
    from plugins.datasets.io import load_cifar10

    images, labels = load_cifar10(data.root_path("cifar10"), split=config.split, download=data.download)
    return engine.ImageData(images, labels, 10, "cifar10")


@dataclass(frozen=True)
class ImageFolderConfig:
    """A folder of class sub-folders of images, resized to ``size``."""

    size: Annotated[int, Field(ge=8, le=1024)] = 64
    channels: Literal[1, 3] = 3


def image_folder(config: ImageFolderConfig, data: engine.DataConfig) -> engine.ImageData:
    """Images under data.root/<class>/*.png|jpg, one class per sub-folder."""
    from plugins.datasets.io import load_image_folder

    images, labels, classes = load_image_folder(data.root_path("image_folder"), config.size, config.channels)
    return engine.ImageData(images, labels, len(classes), "image_folder")


@engine.hookimpl
def gentrain_register_datasets(registry: engine.Registry[Any]) -> None:
    registry.add("shapes", shapes, ShapesConfig)
    for variant in ("mnist", "fashion_mnist", "kmnist"):
        registry.add(variant, _mnist_family(variant), MnistConfig)
    registry.add("cifar10", cifar10, Cifar10Config)
    registry.add("image_folder", image_folder, ImageFolderConfig)
