"""Image folders streamed from disk: the file list in memory, images decoded on demand.

:func:`scan` lists ``root/<class>/**/<image>`` (or every image under ``root``
with ``labels="none"``) once, as a numpy array of path bytes: that is all the
memory a dataset of any size holds, and a numpy array, unlike a list of
``str``, is not copied page by page into forked ``DataLoader`` workers by
reference counting. :class:`FolderDataset` decodes one file per item with
the deterministic transforms (``resize``, ``center_crop``, grayscale);
:class:`RandomTransforms` applies the random ones (``random_crop``,
``hflip``) from ``(seed, epoch, index)`` only, so a resumed run and another
loader path produce the same pixels. :class:`RayFolder` builds the same
decoding as a Ray Dataset (``data.loader=ray_data``).

Every problem names the file: an unreadable or corrupt image, a mode that
cannot be converted to 8-bit (16-bit or float images), an image smaller than
the crop, a symlink that loops back to a folder above it, a folder or file
reached twice (nothing is silently read twice), an empty folder, a file that
disappeared after the folder was listed (the list is fixed when the run starts, so
files added later are not read in it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine import DataError

#: File extensions read (case-insensitive).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")

#: Pillow modes that convert faithfully to 8-bit L or RGB; others (``I;16``, ``I``, ``F``) are refused.
CONVERTIBLE_MODES = ("1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")


# ---------------------------------------------------------------------------
# the file list
# ---------------------------------------------------------------------------


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


class _Walk:
    """A recursive listing that follows symlinks but never loops and never reads anything twice."""

    def __init__(self) -> None:
        self.dirs: dict[tuple[int, int], str] = {}
        self.files: dict[tuple[int, int], str] = {}

    def enter(self, path: str, ancestors: dict[tuple[int, int], str]) -> dict[tuple[int, int], str]:
        st = os.stat(path)
        key = (st.st_dev, st.st_ino)
        if key in ancestors:
            raise DataError(f"symlink loop: {path} leads back to {ancestors[key]}; remove the link")
        if key in self.dirs:
            raise DataError(
                f"{path} is the folder {self.dirs[key]} reached a second time (through a symlink); "
                "its images would be read twice"
            )
        self.dirs[key] = path
        return {**ancestors, key: path}

    def images(self, directory: str, ancestors: dict[tuple[int, int], str]) -> list[str]:
        """Image paths under ``directory`` (sorted, hidden entries skipped)."""
        ancestors = self.enter(directory, ancestors)
        out: list[str] = []
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as exc:
            raise DataError(f"cannot list {directory}: {exc.strerror or exc}") from exc
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=True):
                out += self.images(entry.path, ancestors)
            elif _is_image(entry.name):
                if not entry.is_file(follow_symlinks=True):
                    out.append(entry.path)  # a dangling link: reading it fails, naming it
                    continue
                st = entry.stat(follow_symlinks=True)
                key = (st.st_dev, st.st_ino)
                if key in self.files:
                    raise DataError(f"{entry.path} is the file {self.files[key]} a second time (a link); remove one")
                self.files[key] = entry.path
                out.append(entry.path)
        return out


def scan(root: str | os.PathLike[str], labels: str = "folders") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """List an image folder: ``(paths as bytes, int64 labels, class names)``.

    ``labels="folders"``: each subfolder of ``root`` is a class (sorted names;
    a folder holding only images and no subfolders is one class); ``"none"``:
    every image under ``root``, label 0, no classes.
    """
    folder = Path(root)
    if not folder.is_dir():
        raise DataError(f"image folder {folder} does not exist or is not a directory")
    accepted = ", ".join(IMAGE_EXTENSIONS)
    walk = _Walk()
    top = walk.enter(str(folder), {})
    if labels == "none":
        walk.dirs.clear()
        files = walk.images(str(folder), {})
        if not files:
            raise DataError(f"no images found in {folder} (accepted extensions: {accepted})")
        return np.array(files, dtype=np.bytes_), np.zeros(len(files), dtype=np.int64), []
    entries = sorted((e for e in os.scandir(folder) if not e.name.startswith(".")), key=lambda e: e.name)
    subdirs = [e for e in entries if e.is_dir(follow_symlinks=True)]
    loose = [e.path for e in entries if not e.is_dir(follow_symlinks=True) and _is_image(e.name)]
    per_class = [(d.name, walk.images(d.path, top)) for d in subdirs]
    if not any(files for _, files in per_class):
        if not loose:
            raise DataError(
                f"no images found in {folder}: expected class subfolders containing files with extensions {accepted}"
            )
        per_class = [(folder.name, loose)]
    elif loose:
        raise DataError(
            f"{loose[0]} (and {len(loose) - 1} more) lie directly in {folder} beside class folders: "
            "move them into a class folder, or set data.labels=none"
        )
    empty = [name for name, files in per_class if not files]
    if empty:
        raise DataError(
            f"class folder(s) {', '.join(str(folder / n) for n in empty)} contain no images "
            f"(accepted extensions: {accepted}); remove them or add images"
        )
    paths = [p for _, files in per_class for p in files]
    label = np.concatenate([np.full(len(files), i, dtype=np.int64) for i, (_, files) in enumerate(per_class)])
    return np.array(paths, dtype=np.bytes_), label, [name for name, _ in per_class]


#: The last listing of each folder in this process: ``{root: (number of images, digest of their paths)}``.
#: A checkpoint keeps it, and a resumed run compares (:func:`changed_since`).
LISTINGS: dict[str, tuple[int, str]] = {}


def remember(root: str | os.PathLike[str], paths: np.ndarray) -> None:
    import hashlib

    LISTINGS[str(root)] = (len(paths), hashlib.sha256(paths.tobytes()).hexdigest())


def changed_since(saved: dict[str, Any]) -> str | None:
    """How the folder of a checkpoint's listing (``{"root", "files", "digest"}``) differs now; ``None``: it does not."""
    root = str(saved.get("root"))
    now = LISTINGS.get(root)
    if now is None or (now[0], now[1]) == (saved.get("files"), saved.get("digest")):
        return None
    if now[0] != saved.get("files"):
        return f"image folder {root} holds {now[0]} images now, {saved.get('files')} when the checkpoint was written"
    return f"image folder {root} holds the same number of images as when the checkpoint was written, but other names"


# ---------------------------------------------------------------------------
# decoding and transforms
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Transforms:
    """The deterministic part: shorter side to ``resize`` (0: as stored), centre square of ``center_crop``."""

    resize: int
    center_crop: int
    channels: int = 3


def decode(path: str, t: Transforms) -> torch.Tensor:
    """One image file as uint8 ``C×center_crop×center_crop``; a :class:`DataError` naming it if it cannot be."""
    from PIL import Image, ImageOps

    mode = "L" if t.channels == 1 else "RGB"
    try:
        with Image.open(path) as opened:
            if opened.mode not in CONVERTIBLE_MODES:
                raise DataError(
                    f"image {path} has mode {opened.mode} (16-bit or float), which does not convert to 8-bit "
                    f"{mode} without losing its range; convert it to 8-bit first"
                )
            if t.resize and opened.format == "JPEG":
                opened.draft(mode, (t.resize, t.resize))  # decode at a reduced scale when it is much larger
            # Camera JPEGs store their rotation in EXIF (a file without EXIF skips the parse and the copy).
            image = ImageOps.exif_transpose(opened) if "exif" in opened.info else opened
            if image.mode == "P" and "transparency" in image.info:
                image = image.convert("RGBA")  # avoids Pillow's palette-transparency warning
            if image.mode != mode:
                image = image.convert(mode)
            width, height = image.size
            if t.resize:
                scale = t.resize / min(width, height)
                size = (max(t.resize, round(width * scale)), max(t.resize, round(height * scale)))
                if size != (width, height):
                    image = image.resize(size, Image.Resampling.BICUBIC)
                width, height = size
            c = t.center_crop
            if width < c or height < c:
                raise DataError(
                    f"image {path} is {width}×{height}, smaller than the {c}×{c} crop "
                    "(data.center_crop, or data.size); set data.resize to scale images first"
                )
            if (width, height) != (c, c):
                left, top = (width - c) // 2, (height - c) // 2
                image = image.crop((left, top, left + c, top + c))
            array = np.asarray(image, dtype=np.uint8)
    except DataError:
        raise
    except FileNotFoundError as exc:
        raise DataError(
            f"image {path} no longer exists: the folder changed after the run listed it "
            "(files added since are not read until the next run)"
        ) from exc
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from exc
    chw = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    return torch.from_numpy(chw.copy())  # writable and contiguous


@dataclass(frozen=True)
class RandomTransforms:
    """``random_crop`` (a square of that side, 0: off) and ``hflip`` (p = 1/2), from ``(seed, epoch, index)``."""

    random_crop: int = 0
    hflip: bool = False

    def __call__(self, image: torch.Tensor, index: int, epoch: int, seed: int) -> torch.Tensor:
        bits = _mix(_mix(_mix(seed) ^ epoch) ^ index)  # stateless: 64 random bits per (seed, epoch, index)
        if self.random_crop:
            _, h, w = image.shape
            top = (bits & 0xFFFFFF) % (h - self.random_crop + 1)
            left = ((bits >> 24) & 0xFFFFFF) % (w - self.random_crop + 1)
            image = image[:, top : top + self.random_crop, left : left + self.random_crop]
        if self.hflip and bits >> 63:
            image = image.flip(-1)
        return image.contiguous()


def _mix(x: int) -> int:
    """SplitMix64's finaliser: a well-mixed 64-bit function of ``x`` (about a microsecond in Python)."""
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


class FolderDataset(torch.utils.data.Dataset[Any]):
    """Map-style: ``dataset[i] -> (uint8 image, label)``, decoded when asked."""

    def __init__(self, paths: np.ndarray, labels: np.ndarray, transforms: Transforms) -> None:
        self.paths, self.labels, self.transforms = paths, labels, transforms

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return decode(self.paths[i].decode(), self.transforms), int(self.labels[i])


class _DecodeRows:
    """Ray Data ``map_batches`` function: ``{"index"}`` rows to ``{"image", "label", "index"}``."""

    def __init__(self, paths: np.ndarray, labels: np.ndarray, transforms: Transforms) -> None:
        self.paths, self.labels, self.transforms = paths, labels, transforms

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        index = batch["index"].astype(np.int64)
        images = [decode(self.paths[i].decode(), self.transforms).numpy() for i in index]
        return {"image": np.stack(images), "label": self.labels[index], "index": index}


class RayFolder:
    """``to_ray(indices)``: the images at ``indices`` as a Ray Dataset decoded by the cluster's CPUs."""

    def __init__(self, paths: np.ndarray, labels: np.ndarray, transforms: Transforms) -> None:
        self.paths, self.labels, self.transforms = paths, labels, transforms

    def __call__(self, indices: list[int]) -> Any:
        import ray.data

        rows = ray.data.from_items([{"index": i} for i in indices])
        return rows.map_batches(_DecodeRows(self.paths, self.labels, self.transforms), batch_size=64)
