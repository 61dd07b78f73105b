"""Plugins ``tests/engine/test_streaming.py`` loads in every Ray worker (``GENTRAIN_PLUGINS=ray_data_plugins``).

* ``indexed_folder``: ``image_folder`` whose label is each image's index in the folder (no classes),
  so a recorder can see which images a worker was handed;
* a recorder writing ``seen-rank<r>.jsonl`` into the run directory: ``[epoch, step, indices]`` per step.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np

import engine
from plugins.datasets import ImageFolderConfig, image_folder
from plugins.datasets.folder import FolderDataset, RayFolder


def indexed_folder(config: ImageFolderConfig, data: engine.DataConfig) -> engine.StreamingData:
    stream = image_folder(config, data)
    folder = stream.dataset
    assert isinstance(folder, FolderDataset)
    index = np.arange(len(folder), dtype=np.int64)
    return dataclasses.replace(
        stream,
        dataset=FolderDataset(folder.paths, index, folder.transforms),
        to_ray=RayFolder(folder.paths, index, folder.transforms),
        spec=dataclasses.replace(stream.spec, num_classes=None),
    )


@engine.hookimpl
def gentrain_register_datasets(registry: engine.Registry[Any]) -> None:
    registry.add("indexed_folder", indexed_folder, ImageFolderConfig)


@engine.hookimpl
def gentrain_on_train_batch_start(trainer: engine.Trainer, step: int, batch: Any) -> None:
    trainer.run_dir.mkdir(parents=True, exist_ok=True)
    with (trainer.run_dir / f"seen-rank{trainer.rank}.jsonl").open("a") as f:
        f.write(json.dumps([trainer.epoch, step, batch[1].tolist()]) + "\n")
