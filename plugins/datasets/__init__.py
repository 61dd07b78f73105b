"""The built-in datasets: procedural shapes, the MNIST family, CIFAR-10 and image folders.

A plugin like any other (entry point ``datasets``): each dataset is a
factory ``(its config, the data section) -> engine.ImageData`` registered
with its config class. The readers live in :mod:`plugins.datasets.io`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
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
    """A folder of images (class sub-folders as labels, or none), decoded as it is read.

    Per image, in this order: convert to RGB (grayscale with ``to_grayscale`` or
    ``channels=1``); scale the shorter side to ``resize`` (default ``size``; 0
    leaves images as stored); take the centre square of ``center_crop``
    (default ``size``); then, from ``(seed, epoch, index)``, a random square of
    ``random_crop`` and a horizontal flip (``hflip``, p = 1/2). The model sees
    ``random_crop`` (or ``center_crop``) pixels square.
    """

    #: Side of the images (the default of ``resize`` and ``center_crop``).
    size: Annotated[int, Field(ge=8, le=1024)] = 64
    #: 3: RGB; 1: grayscale.
    channels: Literal[1, 3] = 3
    #: Shorter side scaled to this first (aspect kept); None: ``size``; 0: as stored.
    resize: Annotated[int, Field(ge=0, le=4096)] | None = None
    #: Side of the centre square kept; None: ``size``.
    center_crop: Annotated[int, Field(ge=8, le=4096)] | None = None
    #: Side of a random square of the centre crop, drawn per (seed, epoch, image); None: off.
    random_crop: Annotated[int, Field(ge=8, le=4096)] | None = None
    #: Mirror left-right with probability 1/2, drawn per (seed, epoch, image).
    hflip: bool = False
    #: Grayscale (the same as ``channels=1``).
    to_grayscale: bool = False
    #: ``folders``: each sub-folder of data.root is a class; ``none``: every image under it, unlabelled.
    labels: Literal["folders", "none"] = "folders"


def image_folder(config: ImageFolderConfig, data: engine.DataConfig) -> engine.StreamingData:
    """Images under data.root/<class>/*.png|jpg (one class per sub-folder), or any layout with labels=none.

    Only the file list is read here; images are decoded as they are needed
    (in memory once when they fit and nothing is random, ``data.loader=auto``).
    """
    from plugins.datasets.folder import FolderDataset, RandomTransforms, RayFolder, Transforms, remember, scan

    crop = config.center_crop or config.size
    resize = config.size if config.resize is None else config.resize
    if resize and crop > resize:
        raise engine.ConfigError.one("data.center_crop", crop, f"is larger than the images after data.resize={resize}")
    if config.random_crop is not None and config.random_crop > crop:
        raise engine.ConfigError.one(
            "data.random_crop", config.random_crop, f"is larger than the {crop}×{crop} centre crop it is taken from"
        )
    root = data.root_path("image_folder")
    paths, labels, classes = scan(root, config.labels)
    remember(root, paths)
    channels = 1 if config.to_grayscale else config.channels
    transforms = Transforms(resize=resize, center_crop=crop, channels=channels)
    random = RandomTransforms(config.random_crop or 0, config.hflip)
    side = config.random_crop or crop
    spec = engine.DataSpec((channels, side, side), num_classes=len(classes) or None, name="image_folder")
    return engine.StreamingData(
        FolderDataset(paths, labels, transforms),
        spec,
        len(paths),
        augment=random if (random.random_crop or random.hflip) else None,
        to_ray=RayFolder(paths, labels, transforms),
        name="image_folder",
    )


@engine.hookimpl
def gentrain_on_save_checkpoint(trainer: engine.Trainer, state: dict[str, Any]) -> None:
    """Keep the listing of the image folder trained on, so a resume can tell whether it changed."""
    from plugins.datasets.folder import LISTINGS

    if trainer.config.data.root is None:
        return
    root = str(Path(trainer.config.data.root).expanduser().resolve())
    if root in LISTINGS:
        files, digest = LISTINGS[root]
        state["plugin_state"]["datasets"] = {"root": root, "files": files, "digest": digest}


@engine.hookimpl
def gentrain_on_load_checkpoint(trainer: engine.Trainer, state: dict[str, Any]) -> None:
    """A resumed run on an image folder that changed since the checkpoint says so: its batches differ."""
    from plugins.datasets.folder import changed_since

    saved = state.get("plugin_state", {}).get("datasets")
    why = changed_since(saved) if isinstance(saved, dict) else None
    if why is not None and trainer.is_rank_zero:
        logging.getLogger("gentrain").warning(
            "gentrain: %s (data.root); the resumed run continues at step %d, but on other batches than "
            "the interrupted run would have seen: restore the folder for an exact resume",
            why,
            trainer.step,
        )


@engine.hookimpl
def gentrain_register_datasets(registry: engine.Registry[Any]) -> None:
    registry.add("shapes", shapes, ShapesConfig)
    for variant in ("mnist", "fashion_mnist", "kmnist"):
        registry.add(variant, _mnist_family(variant), MnistConfig)
    registry.add("cifar10", cifar10, Cifar10Config)
    registry.add("image_folder", image_folder, ImageFolderConfig)
