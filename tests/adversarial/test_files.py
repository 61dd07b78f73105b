"""Config files, search space files, data roots and image folders: refused by name, exit 2, one line, nothing run."""

from __future__ import annotations

import gzip
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.adversarial.conftest import TINY, refused


def _bomb(levels: int = 9) -> str:
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def _marker_payload(marker: Path, tag: str) -> str:
    if tag == "apply":
        return f"model: !!python/object/apply:os.system ['touch {marker}']\n"
    if tag == "new":
        return f"model: !!python/object/new:subprocess.Popen [['touch', '{marker}']]\n"
    if tag == "name":
        return "model: !!python/name:os.system\n"
    return f"model: !!python/object:pathlib.Path {{path: {marker}}}\n"


TEXT_CONFIGS: list[tuple[str, str | bytes, str]] = [
    # (id, file content, what the message names besides the file)
    ("alias-bomb", _bomb(), "aliases"),
    ("alias-bomb-in-model", _bomb() + "model: {name: ae, hidden: *a8}\n", "aliases"),
    ("recursive-alias", "a: &a [*a]\n", "refers to itself"),
    ("deep-flow", "a: " + "[" * 5000 + "]" * 5000 + "\n", "deeper than"),
    ("deep-block", "".join("  " * i + f"k{i}:\n" for i in range(200)) + "  " * 200 + "x: 1\n", "deeper than"),
    ("latin-1", "model:\n  name: caf\xe9\n".encode("latin-1"), "not UTF-8"),
    ("utf-16", "model: {name: ae}\n".encode("utf-16"), "not UTF-8"),
    ("binary", bytes(range(256)) * 4, "not UTF-8"),
    ("nul-bytes", b"model:\x00 {name: ae}\n", "<config file>"),
    ("invalid-yaml", "model: {name: ae\n", "not valid YAML"),
    ("tab-indent", "model:\n\tname: ae\n", "not valid YAML"),
    ("two-documents", "model: {name: ae}\n---\nmodel: {name: vae}\n", "not valid YAML"),
    ("a-list", "- model\n- data\n", "mapping"),
    ("a-scalar", "just words\n", "mapping"),
    ("unhashable-key", "? [1, 2]\n: x\n", "not valid YAML"),
    ("int-section", "1: x\nmodel: {name: ae}\n", "unknown section"),
    ("model-name-a-list", "model: {name: [1, 2]}\n", "model.name"),
    ("trainer-a-number", "model: {name: ae}\ntrainer: 5\n", "trainer"),
    ("bool-epochs", "model: {name: ae}\ntrainer: {epochs: yes}\n", "trainer.epochs"),
    ("huge-value", "model: {name: ae, bogus: '" + "y" * 500_000 + "'}\n", "model.bogus"),
    ("huge-key", "model: {name: ae, " + "k" * 100_000 + ": 1}\n", "<config file>"),
    ("long-block-key", "model:\n  name: ae\n  " + "k" * 1000 + ": 1\n", "unknown field"),
    ("no-model", "trainer: {epochs: 1}\n", "model.name"),
    ("empty", "", "model.name"),
    ("run-name-escapes", "model: {name: ae}\nrun: {name: ../../etc}\n", "run.name"),
    ("run-name-absolute", "model: {name: ae}\nrun: {name: /etc/passwd}\n", "run.name"),
    ("too-large", "model: {name: ae}\n" + "# padding\n" * 120_000, "bytes"),
]


@pytest.mark.parametrize(("content", "name"), [c[1:] for c in TEXT_CONFIGS], ids=[c[0] for c in TEXT_CONFIGS])
def test_config_file_is_refused(cli: Any, tmp_path: Path, content: str | bytes, name: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    out = tmp_path / "out"
    outcome = cli(["fit", str(path), f"run.output_dir={out}", "data.n=64", "trainer.batch_size=8"])
    refused(outcome, name, absent=[out])


@pytest.mark.parametrize("tag", ["apply", "new", "name", "object"])
def test_python_tags_are_refused_and_never_run(cli: Any, tmp_path: Path, tag: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "config.yaml"
    path.write_text(_marker_payload(marker, tag))
    refused(cli(["fit", str(path), f"run.output_dir={tmp_path / 'out'}"]), str(path), absent=[marker, tmp_path / "out"])


@pytest.mark.parametrize(
    ("make", "name"),
    [
        (lambda p: p / "missing.yaml", "no such file"),
        (lambda p: p, "is a directory"),
        (lambda p: p / "missing.py", "no such file"),
    ],
    ids=["missing", "a-directory", "missing-recipe"],
)
def test_config_path_that_is_not_a_file(cli: Any, tmp_path: Path, make: Callable[[Path], Path], name: str) -> None:
    path = make(tmp_path)
    refused(cli(["fit", str(path), f"run.output_dir={tmp_path / 'out'}"]), name, absent=[tmp_path / "out"])


def test_recipe_without_config(cli: Any, tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.py"
    recipe.write_text("X = 1\n")
    refused(cli(["fit", str(recipe), f"run.output_dir={tmp_path / 'out'}"]), "CONFIG", absent=[tmp_path / "out"])


# -- search spaces: refused before Ray starts -------------------------------------

SPACES: list[tuple[str, str | bytes, str]] = [
    ("reversed-loguniform", "optim.lr: {loguniform: [1e-2, 1e-4]}\n", "reversed"),
    ("reversed-uniform", "optim.lr: {uniform: [0.1, 0.01]}\n", "reversed"),
    ("empty-randint", "model.latent_dim: {randint: [5, 5]}\n", "empty"),
    ("reversed-randint", "model.latent_dim: {randint: [9, 2]}\n", "reversed"),
    ("empty-qrandint", "model.latent_dim: {qrandint: [8, 8, 2]}\n", "empty"),
    ("log-of-zero", "optim.lr: {loguniform: [0, 1e-2]}\n", "lower > 0"),
    ("lograndint-of-zero", "model.latent_dim: {lograndint: [0, 16]}\n", "lower > 0"),
    ("negative-sd", "optim.lr: {randn: [0.01, -1]}\n", "sd"),
    ("zero-q", "optim.lr: {quniform: [0.001, 0.01, 0]}\n", "q must"),
    ("string-bounds", "optim.lr: {uniform: [low, high]}\n", "finite numbers"),
    ("bool-bounds", "optim.lr: {uniform: [true, 2]}\n", "finite numbers"),
    ("nan-bound", "optim.lr: {uniform: [.nan, 1]}\n", "finite numbers"),
    ("mapping-reversed", "optim.lr: {uniform: {lower: 0.1, upper: 0.01}}\n", "reversed"),
    ("empty-choice", "model.latent_dim: {choice: []}\n", "non-empty list"),
    ("empty-grid", "model.latent_dim: {grid_search: []}\n", "non-empty list"),
    ("misspelled", "optim.lr: {logunifrom: [1e-4, 1e-2]}\n", "did you mean 'loguniform'"),
    ("not-a-field", "optim.lrr: {loguniform: [1e-4, 1e-2]}\n", "optim.lrr"),
    ("searches-run", "run.name: {choice: [a, b]}\n", "run.name"),
    ("two-distributions", "optim.lr: {uniform: [1, 2], choice: [1]}\n", "one distribution"),
    ("a-constant", "optim.lr: 0.1\n", "one distribution"),
    ("value-out-of-range", "optim.lr: {uniform: [-1, 1]}\n", "optim.lr"),
    ("choice-out-of-range", "trainer.epochs: {choice: [1, 0]}\n", "trainer.epochs"),
    ("alias-bomb", _bomb(), "aliases"),
    ("not-utf8", b"optim.lr: {choice: [\xff]}\n", "not UTF-8"),
    ("a-list", "- optim.lr\n", "mapping"),
    ("empty-file", "", "search space"),
]


@pytest.mark.parametrize(("content", "name"), [s[1:] for s in SPACES], ids=[s[0] for s in SPACES])
def test_search_space_is_refused_before_ray(cli: Any, tmp_path: Path, content: str | bytes, name: str) -> None:
    space = tmp_path / "space.yaml"
    space.write_bytes(content if isinstance(content, bytes) else content.encode())
    out = tmp_path / "out"
    # The README's form: overrides after --space.
    outcome = cli(["tune", *TINY, "--space", str(space), "tune.scheduler=pbt", f"run.output_dir={out}"])
    refused(outcome, name, absent=[out])


def test_missing_space_file(cli: Any, tmp_path: Path) -> None:
    out = tmp_path / "out"
    refused(cli(["tune", *TINY, "--space", str(tmp_path / "nope.yaml"), f"run.output_dir={out}"]), "no such file")


# -- data roots and image folders --------------------------------------------------


def _png(path: Path, size: int = 12) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), (10, 200, 30)).save(path)


def _folder(root: Path, classes: int = 2, per_class: int = 8) -> Path:
    for c in range(classes):
        for i in range(per_class):
            _png(root / f"c{c}" / f"{i}.png")
    return root


def _symlink_loop_root(tmp: Path) -> Path:
    (tmp / "loop").symlink_to(tmp / "loop")
    return tmp / "loop"


def _root_is_a_file(tmp: Path) -> Path:
    (tmp / "afile").write_text("x")
    return tmp / "afile"


def _duplicate_class(tmp: Path) -> Path:
    root = _folder(tmp / "images")
    (root / "c2").symlink_to(root / "c0")
    return root


def _class_links_to_root(tmp: Path) -> Path:
    root = _folder(tmp / "images")
    (root / "c9").symlink_to(root)
    return root


def _nested_duplicate(tmp: Path) -> Path:
    root = _folder(tmp / "images")
    (root / "c1" / "again").symlink_to(root / "c0")
    (root / "c1" / "more.png").symlink_to(root / "c0" / "0.png")
    return root


def _empty_class(tmp: Path) -> Path:
    root = _folder(tmp / "images")
    (root / "c5").mkdir()
    return root


def _corrupt_image(tmp: Path) -> Path:
    root = _folder(tmp / "images")
    (root / "c0" / "bad.png").write_bytes(b"\x89PNG not really")
    return root


def _zero_byte_image(tmp: Path) -> Path:
    root = _folder(tmp / "images")
    (root / "c1" / "empty.jpg").write_bytes(b"")
    return root


def _no_images(tmp: Path) -> Path:
    (tmp / "images").mkdir()
    (tmp / "images" / "readme.txt").write_text("no images here")
    return tmp / "images"


DATA_CASES: list[tuple[str, str, Callable[[Path], Path], str]] = [
    ("folder-missing", "image_folder", lambda t: t / "absent", "absent"),
    ("folder-is-a-file", "image_folder", _root_is_a_file, "afile"),
    ("folder-symlink-loop", "image_folder", _symlink_loop_root, "data.root"),
    ("duplicate-class-symlink", "image_folder", _duplicate_class, "read twice"),
    ("class-links-to-root", "image_folder", _class_links_to_root, "symlink loop"),
    ("nested-duplicate", "image_folder", _nested_duplicate, "read twice"),
    ("empty-class", "image_folder", _empty_class, "c5"),
    ("corrupt-image", "image_folder", _corrupt_image, "bad.png"),
    ("zero-byte-image", "image_folder", _zero_byte_image, "empty.jpg"),
    ("no-images", "image_folder", _no_images, "no images"),
    ("mnist-missing", "mnist", lambda t: t / "absent", "absent"),
    ("mnist-root-is-a-file", "mnist", _root_is_a_file, "afile"),
    ("mnist-symlink-loop", "mnist", _symlink_loop_root, "data.root"),
    ("cifar-missing", "cifar10", lambda t: t / "absent", "absent"),
]


def _idx_images(root: Path, count: int, data: int) -> None:
    root.mkdir()
    header = bytes([0, 0, 8, 3]) + struct.pack(">3I", count, 28, 28)
    (root / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(header + bytes(data)))
    labels = bytes([0, 0, 8, 1]) + struct.pack(">I", count) + bytes(count)
    (root / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels))


def _mnist_truncated(tmp: Path) -> Path:
    _idx_images(tmp / "mnist", 100, 5000)
    return tmp / "mnist"


def _mnist_labels_out_of_range(tmp: Path) -> Path:
    root = tmp / "mnist"
    _idx_images(root, 64, 64 * 784)
    labels = bytes([0, 0, 8, 1]) + struct.pack(">I", 64) + bytes([200] * 64)
    (root / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels))
    return root


DATA_CASES += [
    ("mnist-truncated", "mnist", _mnist_truncated, "truncated"),
    ("mnist-labels-out-of-range", "mnist", _mnist_labels_out_of_range, "labels"),
]


@pytest.mark.parametrize(("dataset", "make", "name"), [c[1:] for c in DATA_CASES], ids=[c[0] for c in DATA_CASES])
def test_bad_data_is_refused_before_training(
    cli: Any, tmp_path: Path, dataset: str, make: Callable[[Path], Path], name: str
) -> None:
    root = make(tmp_path)
    out = tmp_path / "out"
    args = [f"data.name={dataset}", f"data.root={root}", "model.name=ae", "trainer.batch_size=4", "trainer.epochs=1"]
    if dataset == "image_folder":
        args.append("data.size=16")
    if dataset == "mnist":
        args.append("data.split=test")
    refused(cli(["fit", *args, f"run.output_dir={out}"]), name, absent=[out])
