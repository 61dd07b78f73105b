"""Raw dataset readers and generators.

Every reader here returns plain tensors: images as ``uint8`` ``N x C x H x W``
and labels as ``int64`` ``N``. There is no registry and no ``DataLoader`` here;
the data plugins wrap these functions. Every problem a user can cause (a missing
directory, a truncated or corrupt file, no network) is raised as
:class:`engine.DataError` with a message that says what was wrong and how
to fix it.

Readers:

* :func:`read_idx` - one IDX file (raw or gzipped), as used by the MNIST family.
* :func:`load_mnist_family` - MNIST, Fashion-MNIST and Kuzushiji-MNIST.
* :func:`load_cifar10` - CIFAR-10 from its *binary* release (never pickle).
* :func:`load_image_folder` - a class-per-subfolder directory of images.

Generators:

* :func:`make_shapes` - a procedural dSprites-like dataset, rendered in torch.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import math
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import warnings
import zlib
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch

from engine import DataError, suggest

__all__ = [
    "CIFAR10",
    "DOWNLOAD_TIMEOUT_S",
    "IMAGE_EXTENSIONS",
    "MNIST_FAMILY",
    "SHAPE_CLASSES",
    "SPLITS",
    "load_cifar10",
    "load_image_folder",
    "load_mnist_family",
    "make_shapes",
    "read_idx",
]

#: Seconds a download may stall before it is abandoned (passed to ``urlopen``).
DOWNLOAD_TIMEOUT_S = 60.0

#: The splits every loader accepts; ``"all"`` is train followed by test.
SPLITS = ("train", "test", "all")

_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20

# ---------------------------------------------------------------------------
# IDX
# ---------------------------------------------------------------------------

# IDX type codes, so an unsupported file can be named precisely in the error.
_IDX_TYPES = {
    0x08: "unsigned byte",
    0x09: "signed byte",
    0x0B: "short (int16)",
    0x0C: "int (int32)",
    0x0D: "float (float32)",
    0x0E: "double (float64)",
}


def _read_maybe_gzip(path: Path) -> bytes:
    """Return the bytes of ``path``, decompressed if it starts with the gzip magic.

    Gzip is detected from the content, not the name, because downloaded files
    are often renamed or unpacked by a browser while keeping their extension.
    """
    try:
        with path.open("rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise DataError(f"file not found: {path}") from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if data[:2] != _GZIP_MAGIC:
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        # gzip raises BadGzipFile (OSError), EOFError or zlib.error depending on
        # where the damage is; callers should only ever see one error type.
        raise DataError(
            f"{path} is a corrupted gzip file ({type(exc).__name__}: {exc}); delete it and download or copy it again"
        ) from exc


def read_idx(path: str | os.PathLike[str]) -> torch.Tensor:
    """Read an IDX file (raw or gzipped) into a ``uint8`` tensor.

    The IDX format is: two zero bytes, one type code byte, one byte giving the
    number of dimensions ``d``, then ``d`` big-endian ``uint32`` sizes, then the
    data in C order. Only type ``0x08`` (unsigned byte) is supported, which is
    what every MNIST-family file uses.

    Raises:
        DataError: the file is missing, not IDX, of another element type, has a
            truncated header, a payload whose length does not match its
            dimensions, or is a corrupted gzip stream.
    """
    p = Path(path)
    data = _read_maybe_gzip(p)
    if len(data) < 4:
        raise DataError(f"{p} is not an IDX file: only {len(data)} bytes long (a header needs at least 4)")
    if data[0] != 0 or data[1] != 0:
        raise DataError(f"{p} is not an IDX file: bad magic {data[:4].hex()} (it must start with two zero bytes)")
    code, ndim = data[2], data[3]
    if code != 0x08:
        kind = _IDX_TYPES.get(code, "unknown type")
        raise DataError(f"{p}: IDX element type 0x{code:02x} ({kind}) is not supported; only 0x08 (unsigned byte) is")
    if ndim == 0:
        raise DataError(f"{p}: IDX header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(
            f"{p}: truncated IDX header: {ndim} dimensions need {header} header bytes, the file has {len(data)}"
        )
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = math.prod(dims)
    actual = len(data) - header
    if actual != expected:
        what = "truncated" if actual < expected else "has trailing data"
        raise DataError(f"{p}: IDX file {what}: dimensions {list(dims)} need {expected} data bytes, found {actual}")
    # One copy: frombuffer over bytes is read-only, and torch wants writable memory.
    array = np.frombuffer(data, dtype=np.uint8, count=expected, offset=header).reshape(dims).copy()
    return torch.from_numpy(array)


# ---------------------------------------------------------------------------
# Downloads
# ---------------------------------------------------------------------------


def _md5(path: Path) -> str:
    """Return the hex md5 of a file, read in chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download(url: str, dest: Path, md5: str | None, hint: str) -> None:
    """Download ``url`` to ``dest`` atomically, verifying ``md5`` when given.

    The body goes to a temporary file in the destination directory and is only
    renamed into place once complete and verified, so an interrupted download
    never leaves a half file that a later run would take for the real one.
    ``hint`` (how to get the file by hand) is appended to every error.
    """
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    except OSError as exc:
        raise DataError(f"cannot write to download directory {dest.parent}: {exc}\n{hint}") from exc
    tmp = Path(tmp_name)
    try:
        digest = hashlib.md5(usedforsecurity=False)
        try:
            request = urllib.request.Request(url, headers={"User-Agent": "gentrain"})
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response:
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    digest.update(chunk)
                    out.write(chunk)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            # URLError, HTTPError, timeouts and resets are all OSError;
            # IncompleteRead is an HTTPException; a bad URL is a ValueError.
            reason = getattr(exc, "reason", None) or exc
            raise DataError(f"download of {url} failed: {reason}\n{hint}") from exc
        if md5 is not None and digest.hexdigest() != md5:
            raise DataError(
                f"download of {url} has md5 {digest.hexdigest()}, expected {md5}; the file was "
                f"discarded (the mirror may be serving a different or damaged file)\n{hint}"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _check_split(split: str) -> list[str]:
    """Return the concrete splits behind ``split`` or raise a DataError."""
    if split not in SPLITS:
        raise DataError(f"split must be one of {list(SPLITS)}, got {split!r}{suggest(split, SPLITS)}")
    return ["train", "test"] if split == "all" else [split]


def _check_root(root: Path, download: bool, what: str) -> None:
    """Make sure ``root`` is a directory, creating it only when downloading."""
    if root.is_dir():
        return
    if root.exists():
        raise DataError(f"data root {root} is not a directory")
    if not download:
        raise DataError(
            f"data root {root} does not exist. Create it and copy the {what} files into it, "
            "or set data.download=true to fetch them"
        )
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create data root {root}: {exc}") from exc


# ---------------------------------------------------------------------------
# MNIST family
# ---------------------------------------------------------------------------

_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

#: The MNIST-like datasets: file names per split (images, labels), download
#: mirrors (tried in order) and the md5 of each ``.gz`` file (the same sums
#: torchvision checks).
MNIST_FAMILY: dict[str, dict[str, Any]] = {
    "mnist": {
        "title": "MNIST",
        "files": _MNIST_FILES,
        "mirrors": ["https://ossci-datasets.s3.amazonaws.com/mnist/"],
        "md5": {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
        "classes": [str(i) for i in range(10)],
    },
    "fashion_mnist": {
        "title": "Fashion-MNIST",
        "files": _MNIST_FILES,
        "mirrors": ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
        "md5": {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
        "classes": [
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ],
    },
    "kmnist": {
        "title": "Kuzushiji-MNIST",
        "files": _MNIST_FILES,
        "mirrors": ["http://codh.rois.ac.jp/kmnist/dataset/kmnist/"],
        "md5": {
            "train-images-idx3-ubyte.gz": "bdb82020997e1d708af4cf47b453dcf7",
            "train-labels-idx1-ubyte.gz": "e144d726b3acfaa3e44228e80efcd344",
            "t10k-images-idx3-ubyte.gz": "5c965bf0a639b31b8f53240b1b52f4d7",
            "t10k-labels-idx1-ubyte.gz": "7320c461ea6c1c855c0b718fb2a4b134",
        },
        "classes": ["o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"],
    },
}


def _find_file(dirs: list[Path], name: str) -> Path | None:
    """Return the first of ``name`` or ``name`` without ``.gz`` found in ``dirs``."""
    names = [name.removesuffix(".gz"), name] if name.endswith(".gz") else [name]
    for directory in dirs:
        for candidate in names:
            path = directory / candidate
            if path.is_file():
                return path
    return None


def _mnist_hint(spec: dict[str, Any], missing: list[str], dirs: list[Path], raw_dir: Path) -> str:
    """Explain exactly which files to put where to satisfy a missing-file error."""
    base = spec["mirrors"][0]
    lines = [f"copy these files (gzipped or not) into {raw_dir} (or {dirs[-1]}):"]
    lines += [f"  {name}  (from {base}{name})" for name in missing]
    return "\n".join(lines)


def load_mnist_family(
    root: str | os.PathLike[str],
    variant: str = "mnist",
    split: str = "train",
    download: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load MNIST, Fashion-MNIST or Kuzushiji-MNIST from IDX files.

    Each file is looked for, raw or gzipped, in ``root/<variant>/raw``,
    ``root/<variant>`` and ``root`` (first hit wins). Since all variants use the
    same file names, files directly in ``root`` are taken to be of whichever
    variant is asked for: point ``root`` straight at one variant's files, or use
    the ``root/<variant>/`` layout. Missing files are downloaded into
    ``root/<variant>/raw`` when ``download`` is true.

    Args:
        root: data directory.
        variant: a key of :data:`MNIST_FAMILY`.
        split: ``"train"``, ``"test"`` or ``"all"``. ``"all"`` concatenates train
            and test; if only one of them is on disk (and ``download`` is
            false) it returns that one and warns.
        download: fetch missing files from the variant's mirror.

    Returns:
        ``(images, labels)``: ``uint8`` ``N x 1 x 28 x 28`` and ``int64`` ``N``.

    Raises:
        DataError: unknown variant or split, missing root or files, failed
            download, corrupt files, or image and label counts that differ.
    """
    if variant not in MNIST_FAMILY:
        raise DataError(
            f"unknown MNIST variant {variant!r}{suggest(variant, MNIST_FAMILY)}; choose one of {sorted(MNIST_FAMILY)}"
        )
    splits = _check_split(split)
    spec = MNIST_FAMILY[variant]
    base = Path(root)
    _check_root(base, download, spec["title"])
    raw_dir = base / variant / "raw"
    # Variant-specific directories first: the four file names are the same for
    # every variant, so a file directly in ``root`` could belong to another one.
    dirs = [raw_dir, base / variant, base]

    def locate(name: str) -> tuple[Path | None, Path | None]:
        images_name, labels_name = spec["files"][name]
        return _find_file(dirs, images_name), _find_file(dirs, labels_name)

    found = {name: locate(name) for name in splits}
    complete = [s for s in splits if None not in found[s]]
    if download:
        for name in splits:
            for filename, path in zip(spec["files"][name], found[name], strict=True):
                if path is None:
                    _download_mnist_file(spec, filename, raw_dir, dirs)
            found[name] = locate(name)
        complete = splits
    elif not complete:
        missing = [f for s in splits for f, p in zip(spec["files"][s], found[s], strict=True) if p is None]
        searched = "\n".join(f"  {d}" for d in dirs)
        raise DataError(
            f"{spec['title']} files missing for split {split!r}: {', '.join(missing)}\n"
            f"Searched (each name also without .gz):\n{searched}\n"
            "Set data.download=true to download them, or " + _mnist_hint(spec, missing, dirs, raw_dir)
        )
    elif len(complete) < len(splits):
        skipped = [s for s in splits if s not in complete]
        warnings.warn(
            f"{spec['title']} split 'all': {skipped} files not found under {base}; using {complete} only",
            stacklevel=2,
        )

    images_parts: list[torch.Tensor] = []
    labels_parts: list[torch.Tensor] = []
    for name in complete:
        images_path, labels_path = found[name]
        assert images_path is not None
        assert labels_path is not None
        images = read_idx(images_path)
        labels = read_idx(labels_path)
        if images.dim() != 3 or tuple(images.shape[1:]) != (28, 28):
            raise DataError(f"{images_path}: expected images of shape N x 28 x 28, got {list(images.shape)}")
        if labels.dim() != 1:
            raise DataError(f"{labels_path}: expected a 1-D label file, got shape {list(labels.shape)}")
        if images.shape[0] != labels.shape[0]:
            raise DataError(
                f"{spec['title']} {name}: {images.shape[0]} images in {images_path} but "
                f"{labels.shape[0]} labels in {labels_path}"
            )
        images_parts.append(images.unsqueeze(1))
        labels_parts.append(labels.to(torch.int64))
    if len(images_parts) == 1:
        return images_parts[0], labels_parts[0]
    return torch.cat(images_parts), torch.cat(labels_parts)


def _download_mnist_file(spec: dict[str, Any], filename: str, raw_dir: Path, dirs: list[Path]) -> None:
    """Fetch one MNIST-family file into ``raw_dir``, trying each mirror in turn."""
    hint = "To get it by hand, " + _mnist_hint(spec, [filename], dirs, raw_dir)
    errors: list[DataError] = []
    for mirror in spec["mirrors"]:
        try:
            _download(mirror + filename, raw_dir / filename, spec["md5"].get(filename), hint)
            return
        except DataError as exc:
            errors.append(exc)
    if len(errors) == 1:
        raise errors[0]
    raise DataError("every mirror failed:\n" + "\n".join(str(e) for e in errors))


# ---------------------------------------------------------------------------
# CIFAR-10 (binary version)
# ---------------------------------------------------------------------------

#: Where CIFAR-10's binary release lives and how it is laid out.
CIFAR10: dict[str, Any] = {
    "url": "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
    "archive": "cifar-10-binary.tar.gz",
    "md5": "c32a1d4ab5d03f1284b67883e8d87530",
    "dir": "cifar-10-batches-bin",
    "files": {
        "train": [f"data_batch_{i}.bin" for i in range(1, 6)],
        "test": ["test_batch.bin"],
    },
    "classes": [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ],
}

_CIFAR_RECORD = 1 + 3 * 32 * 32


def _extract_cifar(archive: Path, dest: Path) -> None:
    """Extract the regular files under ``cifar-10-batches-bin/`` from ``archive``.

    Members are written one by one (never ``extractall``) so that a hostile
    archive cannot write outside ``dest``: absolute names and ``..`` are
    refused, links and devices are ignored, and each file lands atomically.
    """
    top = CIFAR10["dir"]
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                parts = PurePosixPath(member.name).parts
                if member.name.startswith(("/", "\\")) or PurePosixPath(member.name).is_absolute() or ".." in parts:
                    raise DataError(f"{archive}: refusing unsafe member path {member.name!r}")
                if not member.isfile() or len(parts) < 2 or parts[0] != top:
                    continue
                target = dest.joinpath(*parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                if source is None:
                    continue
                fd, tmp_name = tempfile.mkstemp(prefix=target.name + ".", suffix=".part", dir=target.parent)
                try:
                    with os.fdopen(fd, "wb") as out:
                        shutil.copyfileobj(source, out, _CHUNK)
                    os.replace(tmp_name, target)
                finally:
                    Path(tmp_name).unlink(missing_ok=True)
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise DataError(f"{archive} is a corrupted archive ({exc}); delete it and download it again") from exc
    except OSError as exc:
        raise DataError(f"cannot extract {archive} into {dest}: {exc}") from exc


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR binary batch: records of 1 label byte + 3072 pixel bytes."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    if not data or len(data) % _CIFAR_RECORD:
        raise DataError(
            f"{path}: truncated CIFAR-10 batch: {len(data)} bytes is not a positive multiple of "
            f"the {_CIFAR_RECORD}-byte record size (a full batch is {10000 * _CIFAR_RECORD} bytes)"
        )
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, _CIFAR_RECORD)
    labels = records[:, 0]
    if labels.max() > 9:
        raise DataError(f"{path}: label {int(labels.max())} out of range 0..9; the file is not a CIFAR-10 batch")
    # Pixels are stored as 1024 red, then green, then blue, row-major: already C x H x W.
    return records[:, 1:].reshape(-1, 3, 32, 32), labels


def load_cifar10(
    root: str | os.PathLike[str],
    split: str = "train",
    download: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load CIFAR-10 from its binary release (``cifar-10-batches-bin/*.bin``).

    The batch directory is looked for in ``root/cifar10/raw``, ``root/cifar10``
    and ``root``. If only the archive ``cifar-10-binary.tar.gz`` is
    there, it is extracted into ``root/cifar10/raw``; with ``download`` it is
    fetched there first. The pickled "python version" is never read, because
    unpickling a file can run arbitrary code.

    Returns:
        ``(images, labels)``: ``uint8`` ``N x 3 x 32 x 32`` and ``int64`` ``N``.

    Raises:
        DataError: unknown split, missing root or files, failed download,
            unsafe or corrupt archive, truncated batch.
    """
    splits = _check_split(split)
    base = Path(root)
    _check_root(base, download, "CIFAR-10")
    raw_dir = base / "cifar10" / "raw"
    bases = [raw_dir, base / "cifar10", base]
    needed = [f for s in splits for f in CIFAR10["files"][s]]

    def locate() -> Path | None:
        for b in bases:
            if all((b / CIFAR10["dir"] / f).is_file() for f in needed):
                return b / CIFAR10["dir"]
        return None

    batch_dir = locate()
    if batch_dir is None:
        hint = (
            f"download {CIFAR10['url']} and put it (or its extracted {CIFAR10['dir']}/ "
            f"directory) into {raw_dir} or {base}"
        )
        archive = next((b / CIFAR10["archive"] for b in bases if (b / CIFAR10["archive"]).is_file()), None)
        if archive is None and download:
            archive = raw_dir / CIFAR10["archive"]
            _download(CIFAR10["url"], archive, CIFAR10["md5"], "To get it by hand, " + hint)
        if archive is None:
            searched = "\n".join(f"  {b / CIFAR10['dir']}" for b in bases)
            raise DataError(
                f"CIFAR-10 files missing for split {split!r}: {', '.join(needed)}\n"
                f"Searched:\n{searched}\n(and {CIFAR10['archive']} in their parents)\n"
                f"Set data.download=true to download them, or {hint}"
            )
        _extract_cifar(archive, raw_dir)
        batch_dir = locate()
        if batch_dir is None:
            missing = [f for f in needed if not (raw_dir / CIFAR10["dir"] / f).is_file()]
            raise DataError(f"{archive} does not contain {CIFAR10['dir']}/{', '.join(missing)}")

    parts = [_read_cifar_batch(batch_dir / f) for f in needed]
    images = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0].copy()
    labels = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1].copy()
    return torch.from_numpy(images), torch.from_numpy(labels).to(torch.int64)


# ---------------------------------------------------------------------------
# Image folder
# ---------------------------------------------------------------------------

#: File extensions :func:`load_image_folder` reads (case-insensitive).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def _load_image(path: Path, size: int, mode: str) -> np.ndarray:
    """Open one image, center-crop it to a square, resize and convert it."""
    from PIL import Image, ImageOps  # local: only this loader needs Pillow

    try:
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened)  # camera JPEGs store rotation in EXIF
            if image.mode == "P" and "transparency" in image.info:
                image = image.convert("RGBA")  # avoids Pillow's palette-transparency warning
            image = image.convert(mode)
            width, height = image.size
            side = min(width, height)
            left, top = (width - side) // 2, (height - side) // 2
            image = image.crop((left, top, left + side, top + side))
            if side != size:
                image = image.resize((size, size), Image.Resampling.BICUBIC)
            array = np.asarray(image, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from exc
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def load_image_folder(
    root: str | os.PathLike[str],
    size: int,
    channels: int = 3,
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Load a class-per-subfolder image directory (like torchvision's ImageFolder).

    ``root/<class>/**/<image>`` with the extensions in :data:`IMAGE_EXTENSIONS`.
    Classes are the sorted subfolder names; label ``i`` is ``classes[i]``. A
    folder with images directly in it and no subfolders with images is read as
    one class named after the folder. Each image is center-cropped to a square,
    resized to ``size x size`` and converted to grayscale (``channels=1``) or
    RGB (``channels=3``).

    Returns:
        ``(images, labels, classes)``: ``uint8`` ``N x C x size x size``,
        ``int64`` ``N`` and the class names.

    Raises:
        DataError: bad ``size``/``channels``, missing folder, a class folder
            without images, no images at all, or an unreadable image.
    """
    if not isinstance(size, int) or size < 1:
        raise DataError(f"size must be a positive integer, got {size!r}")
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
    from plugins.datasets.folder import scan  # symlink loops and files reached twice are refused, naming them

    paths, label_array, classes = scan(root)
    per_class = [
        (name, [Path(p.decode()) for p, y in zip(paths, label_array, strict=True) if y == i])
        for i, name in enumerate(classes)
    ]
    mode = "L" if channels == 1 else "RGB"
    total = sum(len(files) for _, files in per_class)
    images = np.empty((total, channels, size, size), dtype=np.uint8)
    labels = np.empty(total, dtype=np.int64)
    i = 0
    for label, (_, files) in enumerate(per_class):
        for path in files:
            images[i] = _load_image(path, size, mode)
            labels[i] = label
            i += 1
    return torch.from_numpy(images), torch.from_numpy(labels), [name for name, _ in per_class]


# ---------------------------------------------------------------------------
# Procedural shapes (dSprites-like)
# ---------------------------------------------------------------------------

#: Shape classes of :func:`make_shapes`, by label.
SHAPE_CLASSES = ("square", "ellipse", "heart")

_SUPERSAMPLE = 2  # 2x2 samples per pixel: cheap anti-aliasing
_RADIUS = 0.25  # radius of the bounding circle at scale 1, as a fraction of size
_MARGIN = 1.0  # pixels kept empty around the frame
_SCALE_RANGE = (0.5, 1.0)  # as in dSprites
_CHUNK_IMAGES = 256  # small chunks keep the temporaries in cache (measured fastest)

# Per shape, the map from the unit disk (the shape's bounding circle) to the
# frame its implicit test is written in: x = u * sx, y = v * sy + oy. Folding
# these into the per-image rotation coefficients keeps them off the full grid.
_SHAPE_FRAMES = (
    (1 / 0.68, 1 / 0.68, 0.0),  # square of half side 0.68: corners at radius 0.96
    (1.0, 1 / 0.6, 0.0),  # ellipse with semi-axes 1 and 0.6
    (1.25, 1.25, 0.25),  # heart: its bounding circle is centred (0, 0.25), radius 1.25
)


def _inside(shape: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Inside-test of one shape in its own frame; ``x`` and ``y`` are overwritten."""
    if shape == 0:  # square: max(|x|, |y|) <= 1
        return torch.maximum(x.abs_(), y.abs_()) <= 1.0
    if shape == 1:  # ellipse (a circle in its frame): x^2 + y^2 <= 1
        return x.mul_(x).addcmul_(y, y) <= 1.0
    # Heart curve: (x^2 + y^2 - 1)^3 <= x^2 y^3.
    x2 = x.mul_(x)
    y2 = y * y
    a = (x2 + y2).sub_(1.0)
    return a.mul(a).mul_(a) <= x2.mul_(y2).mul_(y)


def make_shapes(n: int, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Render ``n`` grayscale images of a square, an ellipse or a heart.

    A dSprites-like dataset with known latent factors, all drawn uniformly from
    a ``torch.Generator`` seeded with ``seed``: the shape class, ``scale`` in
    [0.5, 1], ``rotation`` in [0, 2*pi) radians and ``pos_x``/``pos_y`` in
    [0, 1] (left to right, top to bottom). Positions are mapped so that the
    largest shape at any rotation stays one pixel clear of the border.

    Rendering is vectorised over images: every pixel's 2x2 sample coordinates
    are mapped back through the inverse translation, rotation and scale into
    the shape's canonical frame, tested against the shape's implicit equation
    and averaged to a ``uint8`` intensity.

    Returns:
        ``(images, labels, factors)``: ``uint8`` ``n x 1 x size x size``, the
        ``int64`` shape classes (0 square, 1 ellipse, 2 heart) and a dict of
        ``float32`` tensors ``"scale"``, ``"rotation"``, ``"pos_x"``, ``"pos_y"``.

    Raises:
        DataError: ``n`` not positive or ``size`` below 8.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise DataError(f"n must be a positive integer, got {n!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 8:
        raise DataError(f"size must be an integer >= 8, got {size!r}")

    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, len(SHAPE_CLASSES), (n,), generator=gen, dtype=torch.int64)
    lo, hi = _SCALE_RANGE
    scale = lo + (hi - lo) * torch.rand(n, generator=gen)
    rotation = 2 * math.pi * torch.rand(n, generator=gen)
    pos_x = torch.rand(n, generator=gen)
    pos_y = torch.rand(n, generator=gen)

    # Centres in pixel units; the span leaves room for the largest radius.
    r_max = _RADIUS * size
    span = size - 2 * (r_max + _MARGIN)
    cx = r_max + _MARGIN + pos_x * span
    cy = r_max + _MARGIN + pos_y * span
    radius = scale * r_max

    ss = _SUPERSAMPLE
    grid = (torch.arange(size * ss, dtype=torch.float32) + 0.5) / ss  # sample positions
    images = torch.empty(n, 1, size, size, dtype=torch.uint8)
    for start in range(0, n, _CHUNK_IMAGES):
        stop = min(start + _CHUNK_IMAGES, n)
        samples = torch.empty(stop - start, size * ss, size * ss, dtype=torch.bool)
        for shape in range(len(SHAPE_CLASSES)):
            idx = torch.nonzero(labels[start:stop] == shape).squeeze(1) + start
            if idx.numel() == 0:
                continue
            sx, sy, oy = _SHAPE_FRAMES[shape]
            inv_r = (1.0 / radius[idx]).view(-1, 1, 1)
            cos = torch.cos(rotation[idx]).view(-1, 1, 1) * inv_r
            sin = torch.sin(rotation[idx]).view(-1, 1, 1) * inv_r
            dx = (grid - cx[idx].view(-1, 1)).unsqueeze(1)  # k x 1 x W
            dy = (cy[idx].view(-1, 1) - grid).unsqueeze(2)  # k x H x 1 (y up: hearts upright)
            # Undo translation, rotation and scale: only these two sums touch the
            # full k x H x W grid; every factor is applied to the thin tensors.
            x = (dx * cos * sx) + (dy * sin * sx)
            y = (dy * cos * sy + oy) - (dx * sin * sy)
            samples[idx - start] = _inside(shape, x, y)
        # Average each ss x ss block: the mean coverage becomes the intensity.
        coverage = samples.view(-1, size, ss, size, ss).sum(dim=(2, 4), dtype=torch.int32)
        images[start:stop, 0] = (coverage * 255 + (ss * ss) // 2).div(ss * ss, rounding_mode="floor").to(torch.uint8)
    factors = {"scale": scale, "rotation": rotation, "pos_x": pos_x, "pos_y": pos_y}
    return images, labels, factors
