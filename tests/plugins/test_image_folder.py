"""Image folders streamed from disk: the file list, transforms, bad input, the make_folder generator."""

from __future__ import annotations

import functools
import operator
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import engine
from engine import ConfigError, DataError
from engine.config import resolve
from engine.data import DataLoaderAdapter, MemoryLoader, StreamingData, load_data, load_dataset, split
from engine.plugins import load_plugins
from plugins.datasets.folder import RandomTransforms, Transforms, decode, scan
from plugins.datasets.io import load_image_folder
from plugins.datasets.make_folder import main as make_folder


@pytest.fixture(scope="module")
def pm() -> Any:
    return load_plugins(autoload=False)


def data_config(pm: Any, root: Path, **fields: Any) -> Any:
    raw = {"model": {"name": "gan"}, "data": {"name": "image_folder", "root": str(root), **fields}}
    return resolve(raw, pm).data


def png(path: Path, size: tuple[int, int] = (12, 10), color: Any = (200, 30, 30), mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)
    return path


def test_make_folder_writes_rgb_pngs_in_class_folders(tmp_path: Path) -> None:
    assert make_folder([str(tmp_path / "f"), "--n", "30", "--size", "32", "--seed", "1"]) == 0
    files = sorted((tmp_path / "f").rglob("*.png"))
    assert len(files) == 30
    assert {p.parent.name for p in files} <= {"square", "ellipse", "heart"}
    with Image.open(files[0]) as im:
        assert (im.mode, im.size) == ("RGB", (32, 32))
    paths, labels, classes = scan(tmp_path / "f")
    assert len(paths) == 30
    assert classes == sorted(classes)
    assert labels.dtype == np.int64


def test_make_folder_writes_the_same_files_whatever_the_number_of_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from plugins.datasets import make_folder as module

    monkeypatch.setattr(module, "CHUNK", 10)  # 3 chunks, dealt to 2 processes
    one = module.write_folder(tmp_path / "one", 25, 16, seed=4)
    two = module.write_folder(tmp_path / "two", 25, 16, seed=4, processes=2)
    assert [p.relative_to(tmp_path / "one") for p in one] == [p.relative_to(tmp_path / "two") for p in two]
    assert [p.read_bytes() for p in one] == [p.read_bytes() for p in two]
    assert len({p.read_bytes() for p in one}) == 25


def test_factory_returns_a_stream_with_its_spec_read_from_no_image(tmp_path: Path, pm: Any) -> None:
    for i in range(5):
        png(tmp_path / "a" / f"{i}.png", (40, 30))
        png(tmp_path / "b" / f"{i}.jpg", (30, 50), (10, 10, 200))
    data = data_config(pm, tmp_path, size=16, loader="dataloader", random_crop=12, hflip=True)
    ds = load_dataset(data, pm)
    assert isinstance(ds, StreamingData)
    assert ds.spec.shape == (3, 12, 12)
    assert ds.spec.num_classes == 2
    assert len(ds) == 10
    # Only the file list is held: a numpy array of bytes, no images.
    assert ds.dataset.paths.dtype.kind == "S"  # type: ignore[attr-defined]
    auto = load_dataset(data_config(pm, tmp_path, size=16), pm)  # fits, nothing random: decoded once into memory
    assert isinstance(auto, engine.ImageData)
    assert auto.images.shape == (10, 3, 16, 16)
    frozen = load_data(data, pm)  # evaluation reads it whole: random transforms as in epoch 0
    assert frozen.images.shape == (10, 3, 12, 12)
    gray = load_dataset(data_config(pm, tmp_path, size=16, to_grayscale=True, labels="none"), pm)
    assert gray.spec.shape == (1, 16, 16)
    assert gray.spec.num_classes is None


def test_transforms_are_deterministic_per_seed_epoch_and_index(tmp_path: Path) -> None:
    array = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    Image.fromarray(array).save(tmp_path / "x.png")
    t = Transforms(resize=32, center_crop=32)
    image = decode(str(tmp_path / "x.png"), t)
    assert image.shape == (3, 32, 32)
    assert image.dtype == torch.uint8
    aug = RandomTransforms(random_crop=24, hflip=True)
    a, b = aug(image, 5, 0, 1), aug(image, 5, 0, 1)
    assert a.shape == (3, 24, 24)
    assert torch.equal(a, b)
    variants = {aug(image, 5, e, 1).numpy().tobytes() for e in range(8)}
    assert len(variants) > 1  # another epoch, another crop or flip
    assert not torch.equal(aug(image, 5, 0, 1), aug(image, 6, 0, 1)) or not torch.equal(
        aug(image, 5, 0, 2), aug(image, 5, 0, 1)
    )


def test_crop_larger_than_the_image_names_the_field_or_the_file(tmp_path: Path, pm: Any) -> None:
    png(tmp_path / "a" / "small.png", (10, 10))
    with pytest.raises(ConfigError, match=r"data\.random_crop"):
        load_dataset(data_config(pm, tmp_path, size=16, random_crop=20), pm)
    with pytest.raises(ConfigError, match=r"data\.center_crop"):
        load_dataset(data_config(pm, tmp_path, size=16, center_crop=24), pm)
    with pytest.raises(DataError, match=r"small\.png is 10×10, smaller than the 16×16 crop"):
        load_dataset(data_config(pm, tmp_path, size=16, resize=0), pm)


def test_mixed_modes_convert_and_a_16_bit_image_is_named(tmp_path: Path, pm: Any) -> None:
    png(tmp_path / "a" / "rgb.png")
    png(tmp_path / "a" / "gray.png", mode="L", color=128)
    png(tmp_path / "a" / "rgba.png", mode="RGBA", color=(1, 2, 3, 4))
    png(tmp_path / "a" / "pal.png", mode="P", color=3)
    ds = load_dataset(data_config(pm, tmp_path, size=8), pm)
    assert isinstance(ds, engine.ImageData)
    assert ds.images.shape == (4, 3, 8, 8)
    Image.fromarray(np.full((10, 10), 40000, dtype=np.uint16)).save(tmp_path / "a" / "deep.png")
    with pytest.raises(DataError, match=r"deep\.png has mode I;16"):
        load_dataset(data_config(pm, tmp_path, size=8), pm)


def test_symlink_loop_and_duplicates_are_errors_not_classes(tmp_path: Path, pm: Any) -> None:
    png(tmp_path / "a" / "x.png")
    png(tmp_path / "b" / "y.png")
    os.symlink(tmp_path, tmp_path / "a" / "loop")
    with pytest.raises(DataError, match=r"symlink loop: .*a/loop leads back to"):
        scan(tmp_path)
    with pytest.raises(DataError, match="symlink loop"):  # the in-memory reader too
        load_image_folder(tmp_path, size=8)
    (tmp_path / "a" / "loop").unlink()
    os.symlink(tmp_path / "b", tmp_path / "c")  # the same folder as a second class
    with pytest.raises(DataError, match=r"c is the folder .*b reached a second time"):
        scan(tmp_path)
    (tmp_path / "c").unlink()
    os.symlink(tmp_path / "b" / "y.png", tmp_path / "a" / "y-again.png")
    with pytest.raises(DataError, match=r"is the file .* a second time \(a link\)") as info:
        scan(tmp_path)
    assert "y-again.png" in str(info.value)
    assert "b/y.png" in str(info.value)


def test_empty_folder_and_loose_images(tmp_path: Path, pm: Any) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no images found in .*empty"):
        load_dataset(data_config(pm, tmp_path / "empty"), pm)
    png(tmp_path / "mixed" / "cls" / "a.png")
    png(tmp_path / "mixed" / "stray.png")
    with pytest.raises(DataError, match=r"stray\.png .* beside class folders"):
        scan(tmp_path / "mixed")
    assert len(scan(tmp_path / "mixed", "none")[0]) == 2


@pytest.mark.parametrize("workers", [0, 2])
def test_a_corrupt_file_fails_naming_it_or_is_skipped_and_counted(tmp_path: Path, pm: Any, workers: int) -> None:
    for i in range(11):
        png(tmp_path / "a" / f"{i:02d}.png", (8, 8))
    bad = tmp_path / "a" / "05.png"
    bad.write_bytes(b"\x89PNG truncated")
    data = data_config(pm, tmp_path, size=8, loader="dataloader", loader_workers=workers, val_fraction=0)
    train, _ = split(load_dataset(data, pm), data)
    loader = DataLoaderAdapter(train, 4, shuffle=False, drop_last=False, num_workers=workers)
    with pytest.raises(DataError) as info:
        list(loader.iter_from(0))
    assert str(bad) in str(info.value)
    assert "\n" not in str(info.value)
    data = data_config(pm, tmp_path, size=8, loader="dataloader", val_fraction=0, on_bad_file="skip")
    train, _ = split(load_dataset(data, pm), data)
    loader = DataLoaderAdapter(train, 4, shuffle=False, drop_last=False, num_workers=workers, on_bad_file="skip")
    assert sum(len(x) for x, _ in loader.iter_from(0)) == 10
    assert loader.skipped == 1


class ChangeTheFolder:
    """When training starts, deletes one listed image and adds an unreadable one."""

    def __init__(self, gone: Path, added: Path) -> None:
        self.gone, self.added = gone, added

    @engine.hookimpl
    def gentrain_on_fit_start(self) -> None:
        self.gone.unlink()
        self.added.write_bytes(b"not a png")


@pytest.mark.parametrize("workers", [0, 2])
def test_a_folder_that_changes_during_training_names_the_file_or_skips_it(
    tmp_path: Path, workers: int, caplog: pytest.LogCaptureFixture
) -> None:
    from engine.testing import plugin_manager

    root = tmp_path / "pngs"
    make_folder([str(root), "--n", "40", "--size", "16"])
    gone, added = sorted(root.rglob("*.png"))[7], root / "square" / "added-later.png"
    config = {
        "model": {"name": "gan", "arch": "dcgan", "channels": 4, "latent_dim": 8},
        "data": {
            "name": "image_folder",
            "root": str(root),
            "size": 16,
            "loader": "dataloader",
            "loader_workers": workers,
        },
        "trainer": {"epochs": 1, "batch_size": 4, "num_threads": 1},
        "run": {"output_dir": str(tmp_path / "out"), "name": "fail"},
        "callbacks": {"progress": False, "tensorboard": False, "csv": False, "sample_every": 0},
    }
    with plugin_manager(ChangeTheFolder(gone, added)), pytest.raises(DataError) as info:
        engine.fit(config)
    message = str(info.value)
    assert f"image {gone} no longer exists: the folder changed after the run listed it" in message
    assert "\n" not in message
    png(gone, (16, 16))
    added.unlink()
    skip = {**config, "data": {**config["data"], "on_bad_file": "skip"}, "run": {**config["run"], "name": "skip"}}
    with plugin_manager(ChangeTheFolder(gone, added)), caplog.at_level("WARNING", logger="gentrain"):
        result = engine.fit(skip)
    assert result.metrics["step"] == 36 // 4  # 40 images, 4 held out: one batch is an image short
    skipped = [r.getMessage() for r in caplog.records if "skipped a bad file" in r.getMessage()]
    assert len(skipped) == 1, skipped  # the file added during the run is never read: it was not listed
    assert f"(1 so far): image {gone} no longer exists" in skipped[0]


def test_resuming_on_a_folder_that_changed_since_the_checkpoint_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "pngs"
    make_folder([str(root), "--n", "40", "--size", "16"])
    config = {
        "model": {"name": "gan", "arch": "dcgan", "channels": 4, "latent_dim": 8},
        "data": {"name": "image_folder", "root": str(root), "size": 16, "loader": "dataloader"},
        "trainer": {"epochs": 3, "batch_size": 4, "num_threads": 1, "max_steps": 2},
        "run": {"output_dir": str(tmp_path / "out"), "name": "r"},
        "callbacks": {"progress": False, "tensorboard": False, "csv": False, "sample_every": 0},
    }

    def resume(max_steps: int) -> list[str]:
        caplog.clear()
        with caplog.at_level("WARNING", logger="gentrain"):
            engine.fit({**config, "trainer": {**config["trainer"], "max_steps": max_steps}})
        return [r.getMessage() for r in caplog.records if "image folder" in r.getMessage()]

    engine.fit(config)
    assert resume(4) == []  # unchanged: an exact resume, nothing to say
    png(root / "heart" / "new.png", (16, 16))
    (warning,) = resume(6)
    assert f"image folder {root} holds 41 images now, 40 when the checkpoint was written (data.root)" in warning
    assert "continues at step 4, but on other batches" in warning
    assert "\n" not in warning
    (root / "heart" / "new.png").rename(root / "heart" / "renamed.png")  # 41 again, another name
    assert "the same number of images as when the checkpoint was written, but other names" in resume(8)[0]


@pytest.mark.parametrize("workers", [0, 2])
def test_every_path_sees_the_same_batches_and_resumes_mid_epoch(tmp_path: Path, pm: Any, workers: int) -> None:
    make_folder([str(tmp_path), "--n", "40", "--size", "16"])
    data = data_config(pm, tmp_path, size=16, loader="dataloader", loader_workers=workers)
    train, _ = split(load_dataset(data, pm), data)
    mem_data = data_config(pm, tmp_path, size=16, loader="memory")
    mem_train, _ = split(load_dataset(mem_data, pm), mem_data)
    for rank in (0, 1):
        stream = DataLoaderAdapter(train, 4, shuffle=True, seed=3, rank=rank, world_size=2, num_workers=workers)
        memory = MemoryLoader(mem_train, 4, shuffle=True, seed=3, rank=rank, world_size=2)
        for epoch in (0, 1):
            stream.set_epoch(epoch)
            memory.set_epoch(epoch)
            a, b = list(stream.iter_from(0)), list(memory.iter_from(0))
            assert len(a) == len(b) == len(stream) == 4
            for (xa, ya), (xb, yb) in zip(a, b, strict=True):
                assert torch.equal(xa, xb)
                assert torch.equal(ya, yb)
            tail = list(stream.iter_from(2))
            assert len(tail) == 2
            assert all(torch.equal(t[0], x[0]) for t, x in zip(tail, a[2:], strict=True))


class Counting(torch.utils.data.IterableDataset[Any]):
    """A stream of n items whose image encodes its position."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __iter__(self) -> Any:
        for i in range(self.n):
            yield torch.full((1, 2, 2), i % 256, dtype=torch.uint8), i


@pytest.mark.parametrize("workers", [0, 2])
def test_an_iterable_stream_is_sharded_batched_in_order_and_resumes(workers: int) -> None:
    spec = engine.DataSpec((1, 2, 2))
    data = engine.StreamingData(Counting(50), spec, 50, name="count")
    config = engine.DataConfig(val_fraction=0.2)
    train, val = split(data, config)
    assert (len(train), len(val), train.start) == (40, 10, 10)
    seen = []
    for rank in (0, 1):
        loader = DataLoaderAdapter(train, 4, shuffle=False, rank=rank, world_size=2, num_workers=workers)
        labels = [y.tolist() for _, y in loader.iter_from(0)]
        assert len(labels) == len(loader) == 5
        assert labels[0] == [10 + rank, 12 + rank, 14 + rank, 16 + rank]  # positions 10.. are training items
        assert [y.tolist() for _, y in loader.iter_from(3)] == labels[3:]
        seen += functools.reduce(operator.iadd, labels, [])
    assert sorted(seen) == list(range(10, 50))


def test_a_stream_shorter_than_its_length_is_named() -> None:
    data = engine.StreamingData(Counting(10), engine.DataSpec((1, 2, 2)), 20, name="short")
    loader = DataLoaderAdapter(data, 4, shuffle=False)
    with pytest.raises(DataError, match=r"stream 'short' ended after 2 of the 5 batches its length 20 makes"):
        list(loader.iter_from(0))


def test_loader_choices_that_cannot_work_are_refused_naming_the_field(tmp_path: Path, pm: Any) -> None:
    make_folder([str(tmp_path / "f"), "--n", "12", "--size", "16"])
    base = {
        "model": {"name": "gan"},
        "data": {"name": "image_folder", "root": str(tmp_path / "f"), "size": 16},
        "run": {"output_dir": str(tmp_path / "out"), "name": "x"},
    }
    cases = [
        ({"loader": "ray_data"}, {}, r"data\.loader = 'ray_data'.*num_workers"),
        ({"loader": "ray_data", "on_bad_file": "skip"}, {"num_workers": 2}, r"data\.on_bad_file"),
        ({"loader": "memory", "hflip": True}, {}, r"data\.loader = 'memory'.*freeze the random transforms"),
    ]
    for data, scaling, message in cases:
        config = {**base, "data": {**base["data"], **data}, "scaling": scaling}
        with pytest.raises(ConfigError, match=message):
            engine.prepare(config, plugins=pm)
    with pytest.raises(ConfigError, match=r"data\.loader = 'ray_data'.*read into memory"):
        load_dataset(resolve({"model": {"name": "gan"}, "data": {"name": "shapes", "loader": "ray_data"}}, pm).data, pm)
