"""Tests of engine.datasets on real files written into ``tmp_path``.

No test touches the network: downloads go through a monkeypatched
``urllib.request.urlopen``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import math
import struct
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from engine.errors import DataError
from plugins.datasets import io as datasets
from plugins.datasets.io import (
    MNIST_FAMILY,
    load_cifar10,
    load_image_folder,
    load_mnist_family,
    make_shapes,
    read_idx,
)

SHARED_MNIST = Path(__file__).resolve().parents[3] / "shared" / "data" / "mnist"


# --------------------------------------------------------------------------- helpers


def idx_bytes(array: np.ndarray, code: int = 0x08) -> bytes:
    """Encode ``array`` as an IDX file (the format's writer, for round trips)."""
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def write_mnist(directory: Path, split: str, n: int, seed: int = 0, gz: bool = True) -> None:
    """Write a small synthetic MNIST split with the real file names."""
    rng = np.random.default_rng(seed)
    images_name, labels_name = MNIST_FAMILY["mnist"]["files"][split]
    if not gz:
        images_name, labels_name = images_name[:-3], labels_name[:-3]
    directory.mkdir(parents=True, exist_ok=True)
    write_idx(directory / images_name, rng.integers(0, 256, (n, 28, 28)), gz=gz)
    write_idx(directory / labels_name, rng.integers(0, 10, n), gz=gz)


def cifar_records(n: int, seed: int = 0) -> tuple[bytes, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    pixels = rng.integers(0, 256, (n, 3, 32, 32)).astype(np.uint8)
    records = np.concatenate([labels[:, None], pixels.reshape(n, -1)], axis=1)
    return records.tobytes(), pixels, labels


def write_cifar_dir(batch_dir: Path, n: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Write all six batch files (n records each); return the train arrays."""
    batch_dir.mkdir(parents=True, exist_ok=True)
    train_px, train_lb = [], []
    for i in range(1, 6):
        data, px, lb = cifar_records(n, seed=i)
        (batch_dir / f"data_batch_{i}.bin").write_bytes(data)
        train_px.append(px)
        train_lb.append(lb)
    (batch_dir / "test_batch.bin").write_bytes(cifar_records(n, seed=99)[0])
    return np.concatenate(train_px), np.concatenate(train_lb)


def tar_gz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def serve(monkeypatch: pytest.MonkeyPatch, files: dict[str, bytes]) -> list[str]:
    """Make urlopen answer from ``files`` (by URL suffix); return the URLs asked for."""
    asked: list[str] = []

    def fake_urlopen(request: Any, timeout: float | None = None) -> io.BytesIO:
        url = request.full_url if isinstance(request, urllib.request.Request) else request
        asked.append(url)
        assert timeout is not None, "downloads must set a timeout"
        for suffix, data in files.items():
            if url.endswith(suffix):
                return io.BytesIO(data)
        raise urllib.error.HTTPError(url, 404, "Not Found", None, None)  # type: ignore[arg-type]

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    return asked


def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_urlopen(request: Any, timeout: float | None = None) -> Any:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)


# --------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path: Path, gz: bool) -> None:
    array = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5)
    path = write_idx(tmp_path / "a.idx", array, gz=gz)  # no .gz name: sniffed by magic
    out = read_idx(path)
    assert out.dtype == torch.uint8
    assert out.shape == (2, 3, 5)
    assert np.array_equal(out.numpy(), array)
    out[0, 0, 0] = 7  # writable, not a view of read-only bytes


def test_idx_one_dim_and_pathlike_str(tmp_path: Path) -> None:
    array = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    write_idx(tmp_path / "labels-idx1-ubyte", array)
    assert read_idx(str(tmp_path / "labels-idx1-ubyte")).tolist() == [3, 1, 4, 1, 5]


@pytest.mark.parametrize("gz", [False, True])
def test_idx_truncated(tmp_path: Path, gz: bool) -> None:
    data = idx_bytes(np.zeros((4, 28, 28), dtype=np.uint8))[:-100]
    path = tmp_path / "trunc.idx"
    path.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(DataError) as info:
        read_idx(path)
    message = str(info.value)
    assert "truncated" in message
    assert str(4 * 28 * 28) in message
    assert str(4 * 28 * 28 - 100) in message
    assert str(path) in message


def test_idx_trailing_bytes(tmp_path: Path) -> None:
    path = tmp_path / "long.idx"
    path.write_bytes(idx_bytes(np.zeros(3, dtype=np.uint8)) + b"\x00")
    with pytest.raises(DataError, match="trailing"):
        read_idx(path)


def test_idx_truncated_header(tmp_path: Path) -> None:
    path = tmp_path / "head.idx"
    path.write_bytes(bytes([0, 0, 8, 3]) + b"\x00\x00\x00\x02")
    with pytest.raises(DataError, match="header"):
        read_idx(path)


def test_idx_bad_magic(tmp_path: Path) -> None:
    path = tmp_path / "bad.idx"
    path.write_bytes(b"\x01\x02\x08\x01" + struct.pack(">I", 1) + b"\x00")
    with pytest.raises(DataError, match="magic") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_idx_unsupported_type(tmp_path: Path) -> None:
    path = tmp_path / "float.idx"
    path.write_bytes(bytes([0, 0, 0x0D, 1]) + struct.pack(">I", 1) + b"\x00" * 4)
    with pytest.raises(DataError, match="0x0d"):
        read_idx(path)


def test_idx_corrupted_gzip(tmp_path: Path) -> None:
    compressed = bytearray(gzip.compress(idx_bytes(np.arange(200, dtype=np.uint8))))
    damaged = tmp_path / "damaged.gz"
    compressed[20:40] = b"\xff" * 20
    damaged.write_bytes(bytes(compressed))
    cut = tmp_path / "cut.gz"
    cut.write_bytes(bytes(compressed[: len(compressed) // 2]))
    for path in (damaged, cut):
        with pytest.raises(DataError, match="corrupted gzip") as info:
            read_idx(path)
        assert str(path) in str(info.value)


def test_idx_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        read_idx(tmp_path / "nope")


# --------------------------------------------------------------------------- MNIST


@pytest.mark.mnist
@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason=f"real MNIST not present at {SHARED_MNIST}")
def test_real_mnist_test_split() -> None:
    images, labels = load_mnist_family(SHARED_MNIST, "mnist", split="test")
    assert images.shape == (10000, 1, 28, 28)
    assert images.dtype == torch.uint8
    assert labels.shape == (10000,)
    assert labels.dtype == torch.int64
    assert sorted(labels.unique().tolist()) == list(range(10))
    mean = images.float().mean().item() / 255
    assert 0.12 < mean < 0.14  # MNIST's well-known mean is about 0.13
    # split="all" with only the test files present falls back to test, warning.
    with pytest.warns(UserWarning, match="train"):
        all_images, _ = load_mnist_family(SHARED_MNIST, "mnist", split="all")
    assert all_images.shape[0] == 10000


@pytest.mark.parametrize("where", ["", "mnist", "mnist/raw"])
@pytest.mark.parametrize("gz", [False, True])
def test_mnist_search_locations(tmp_path: Path, where: str, gz: bool) -> None:
    write_mnist(tmp_path / where, "train", 6, gz=gz)
    images, labels = load_mnist_family(tmp_path, split="train")
    assert images.shape == (6, 1, 28, 28)
    assert labels.dtype == torch.int64


def test_mnist_all_concatenates(tmp_path: Path) -> None:
    write_mnist(tmp_path, "train", 5, seed=1)
    write_mnist(tmp_path / "mnist" / "raw", "test", 3, seed=2)
    train, _ = load_mnist_family(tmp_path, split="train")
    test, _ = load_mnist_family(tmp_path, split="test")
    images, labels = load_mnist_family(tmp_path, split="all")
    assert images.shape == (8, 1, 28, 28)
    assert labels.shape == (8,)
    assert torch.equal(images, torch.cat([train, test]))


def test_mnist_missing_files_message(tmp_path: Path) -> None:
    write_mnist(tmp_path, "test", 2)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError) as info:
        load_mnist_family(tmp_path, "fashion_mnist", split="test")
    message = str(info.value)
    # Only the file that is really missing is listed (the images file was found).
    assert "missing for split 'test': t10k-labels-idx1-ubyte.gz\n" in message
    for directory in (tmp_path, tmp_path / "fashion_mnist", tmp_path / "fashion_mnist" / "raw"):
        assert str(directory) in message
    assert "data.download=true" in message
    assert "fashion-mnist.s3-website" in message


def test_mnist_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_mnist_family(tmp_path / "absent")


def test_mnist_bad_variant_and_split(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="fashion_mnist"):
        load_mnist_family(tmp_path, variant="fashion-mnist")
    with pytest.raises(DataError, match="'test'"):
        load_mnist_family(tmp_path, split="tset")


def test_mnist_count_mismatch(tmp_path: Path) -> None:
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((3, 28, 28), dtype=np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(4, dtype=np.uint8))
    with pytest.raises(DataError, match=r"3 images .* 4 labels"):
        load_mnist_family(tmp_path)


def test_mnist_download_without_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    no_network(monkeypatch)
    with pytest.raises(DataError) as info:
        load_mnist_family(tmp_path / "data", "kmnist", split="train", download=True)
    message = str(info.value)
    assert "http://codh.rois.ac.jp/kmnist/dataset/kmnist/train-images-idx3-ubyte.gz" in message
    assert "name resolution" in message
    assert str(tmp_path / "data" / "kmnist" / "raw") in message
    assert not list((tmp_path / "data" / "kmnist" / "raw").iterdir())  # no .part left


def test_mnist_download_success(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    blobs = {
        "train-images-idx3-ubyte.gz": gzip.compress(idx_bytes(rng.integers(0, 256, (5, 28, 28)))),
        "train-labels-idx1-ubyte.gz": gzip.compress(idx_bytes(rng.integers(0, 10, 5))),
    }
    for name, data in blobs.items():
        monkeypatch.setitem(MNIST_FAMILY["mnist"]["md5"], name, hashlib.md5(data).hexdigest())
    asked = serve(monkeypatch, blobs)
    images, _ = load_mnist_family(tmp_path, split="train", download=True)
    assert images.shape == (5, 1, 28, 28)
    assert asked[0].startswith("https://ossci-datasets.s3.amazonaws.com/mnist/")
    assert sorted(p.name for p in (tmp_path / "mnist" / "raw").iterdir()) == sorted(blobs)
    # A second call finds the files and does not download again.
    asked.clear()
    load_mnist_family(tmp_path, split="train", download=True)
    assert asked == []


def test_mnist_download_md5_mismatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    serve(monkeypatch, {"-ubyte.gz": b"not the real file"})
    with pytest.raises(DataError, match="md5"):
        load_mnist_family(tmp_path, split="test", download=True)
    assert not list((tmp_path / "mnist" / "raw").iterdir())


# --------------------------------------------------------------------------- shapes


def test_shapes_contract() -> None:
    images, labels, factors = make_shapes(300, size=32, seed=3)
    assert images.shape == (300, 1, 32, 32)
    assert images.dtype == torch.uint8
    assert labels.shape == (300,)
    assert labels.dtype == torch.int64
    assert set(labels.tolist()) == {0, 1, 2}
    assert set(factors) == {"scale", "rotation", "pos_x", "pos_y"}
    for value in factors.values():
        assert value.shape == (300,)
        assert value.is_floating_point()
    assert factors["scale"].min() >= 0.5
    assert factors["scale"].max() <= 1.0
    assert factors["rotation"].min() >= 0
    assert factors["rotation"].max() < 2 * math.pi
    for key in ("pos_x", "pos_y"):
        assert factors[key].min() >= 0
        assert factors[key].max() <= 1
    # Every image has a fully lit interior and anti-aliased (intermediate) edges.
    assert int(images.amax(dim=(1, 2, 3)).min()) == 255
    assert ((images > 0) & (images < 255)).any()
    assert int(images.amin()) == 0


def test_shapes_inside_frame() -> None:
    images, _, _ = make_shapes(500, size=16, seed=1)
    border = torch.cat([images[..., 0, :], images[..., -1, :], images[..., :, 0], images[..., :, -1]], dim=-1)
    assert int(border.max()) == 0


def test_shapes_factors_drive_the_image() -> None:
    images, labels, factors = make_shapes(400, size=32, seed=5)
    ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    mass = images[:, 0].float()
    cx = (mass * xs).sum((1, 2)) / mass.sum((1, 2))
    cy = (mass * ys).sum((1, 2)) / mass.sum((1, 2))
    # Centroids follow pos_x / pos_y (monotonically, up to the heart's offset).
    assert torch.corrcoef(torch.stack([cx, factors["pos_x"]]))[0, 1] > 0.95
    assert torch.corrcoef(torch.stack([cy, factors["pos_y"]]))[0, 1] > 0.95
    # Area grows with scale within a class.
    square = labels == 0
    area = mass.sum((1, 2))[square]
    assert torch.corrcoef(torch.stack([area, factors["scale"][square]]))[0, 1] > 0.95


def test_shapes_determinism() -> None:
    a = make_shapes(64, seed=7)
    b = make_shapes(64, seed=7)
    c = make_shapes(64, seed=8)
    assert torch.equal(a[0], b[0])
    assert torch.equal(a[1], b[1])
    assert all(torch.equal(a[2][k], b[2][k]) for k in a[2])
    assert not torch.equal(a[0], c[0])


def test_shapes_validation() -> None:
    with pytest.raises(DataError, match="n must"):
        make_shapes(0)
    with pytest.raises(DataError, match="size must"):
        make_shapes(4, size=7)


def test_shapes_speed_sanity() -> None:
    # Not a benchmark: a per-image Python loop would take seconds, not this.
    start = time.perf_counter()
    images, _, _ = make_shapes(2000, size=32)
    elapsed = time.perf_counter() - start
    assert images.shape[0] == 2000
    print(f"make_shapes(2000, 32): {elapsed:.3f} s")


# --------------------------------------------------------------------------- CIFAR-10


@pytest.mark.parametrize("where", ["", "cifar10", "cifar10/raw"])
def test_cifar_round_trip(tmp_path: Path, where: str) -> None:
    train_px, train_lb = write_cifar_dir(tmp_path / where / "cifar-10-batches-bin", n=4)
    images, labels = load_cifar10(tmp_path, split="train")
    assert images.shape == (20, 3, 32, 32)
    assert images.dtype == torch.uint8
    assert labels.dtype == torch.int64
    assert np.array_equal(images.numpy(), train_px)
    assert np.array_equal(labels.numpy(), train_lb)
    test_images, _ = load_cifar10(tmp_path, split="test")
    all_images, _ = load_cifar10(tmp_path, split="all")
    assert test_images.shape[0] == 4
    assert all_images.shape[0] == 24


def test_cifar_truncated_batch(tmp_path: Path) -> None:
    batch_dir = tmp_path / "cifar-10-batches-bin"
    write_cifar_dir(batch_dir, n=2)
    path = batch_dir / "data_batch_3.bin"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match="truncated") as info:
        load_cifar10(tmp_path)
    assert str(path) in str(info.value)


def test_cifar_missing_message(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_cifar10(tmp_path, split="test")
    message = str(info.value)
    assert "test_batch.bin" in message
    assert "cifar-10-binary.tar.gz" in message
    assert "data.download=true" in message
    assert str(tmp_path / "cifar10" / "raw") in message


def test_cifar_extracts_local_archive(tmp_path: Path) -> None:
    data, pixels, labels = cifar_records(3)
    archive = {f"cifar-10-batches-bin/data_batch_{i}.bin": data for i in range(1, 6)}
    archive["cifar-10-batches-bin/test_batch.bin"] = data
    (tmp_path / "cifar-10-binary.tar.gz").write_bytes(tar_gz(archive))
    images, out_labels = load_cifar10(tmp_path, split="test")
    assert np.array_equal(images.numpy(), pixels)
    assert np.array_equal(out_labels.numpy(), labels)
    assert (tmp_path / "cifar10" / "raw" / "cifar-10-batches-bin" / "test_batch.bin").is_file()


def test_cifar_download_and_unsafe_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data, _, _ = cifar_records(2)
    members = {f"cifar-10-batches-bin/data_batch_{i}.bin": data for i in range(1, 6)}
    members["cifar-10-batches-bin/test_batch.bin"] = data
    good = tar_gz(members)
    monkeypatch.setitem(datasets.CIFAR10, "md5", hashlib.md5(good).hexdigest())
    serve(monkeypatch, {"cifar-10-binary.tar.gz": good})
    images, _ = load_cifar10(tmp_path / "ok", split="train", download=True)
    assert images.shape == (10, 3, 32, 32)

    evil = tar_gz({"cifar-10-batches-bin/../../escape.bin": b"x", **members})
    monkeypatch.setitem(datasets.CIFAR10, "md5", hashlib.md5(evil).hexdigest())
    serve(monkeypatch, {"cifar-10-binary.tar.gz": evil})
    with pytest.raises(DataError, match="unsafe"):
        load_cifar10(tmp_path / "evil", download=True)
    assert not (tmp_path / "escape.bin").exists()


def test_cifar_download_without_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    no_network(monkeypatch)
    with pytest.raises(DataError) as info:
        load_cifar10(tmp_path, download=True)
    message = str(info.value)
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz" in message
    assert "name resolution" in message


# --------------------------------------------------------------------------- image folder


def make_png(path: Path, size: tuple[int, int], color: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def test_image_folder(tmp_path: Path) -> None:
    make_png(tmp_path / "dogs" / "a.png", (40, 20), (200, 10, 10))
    make_png(tmp_path / "dogs" / "b.PNG", (20, 20), (10, 200, 10))
    make_png(tmp_path / "cats" / "c.jpg", (16, 30), (10, 10, 200))
    (tmp_path / "cats" / "notes.txt").write_text("ignored")
    images, labels, classes = load_image_folder(tmp_path, size=8)
    assert classes == ["cats", "dogs"]
    assert images.shape == (3, 3, 8, 8)
    assert images.dtype == torch.uint8
    assert labels.tolist() == [0, 1, 1]
    assert images[1, 0].float().mean() > 150  # the red PNG kept its colour
    gray, _, _ = load_image_folder(tmp_path, size=4, channels=1)
    assert gray.shape == (3, 1, 4, 4)


def test_image_folder_center_crop(tmp_path: Path) -> None:
    # A wide image: black left and right thirds, white middle; the crop keeps the middle.
    array = np.zeros((30, 90), dtype=np.uint8)
    array[:, 30:60] = 255
    (tmp_path / "x").mkdir()
    Image.fromarray(array).save(tmp_path / "x" / "wide.png")
    images, _, _ = load_image_folder(tmp_path, size=10, channels=1)
    assert int(images.min()) > 240


def test_image_folder_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"\.png") as info:
        load_image_folder(tmp_path / "empty", size=8)
    assert str(tmp_path / "empty") in str(info.value)
    with pytest.raises(DataError, match="does not exist"):
        load_image_folder(tmp_path / "absent", size=8)
    bad = tmp_path / "bad" / "cls" / "broken.png"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError) as info:
        load_image_folder(tmp_path / "bad", size=8)
    assert str(bad) in str(info.value)
    with pytest.raises(DataError, match="channels"):
        load_image_folder(tmp_path / "bad", size=8, channels=2)
