"""Property: whatever overrides or YAML document it is given, ``gentrain fit --check`` exits 0 or 2, with a message.

``--check`` validates and prepares (data, model, paths) without training, so
no example trains or starts Ray (the ``cli`` fixture fails the test if one
tried). Examples per test: ``GENTRAIN_FUZZ_EXAMPLES`` (default 100).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.adversarial.conftest import TINY

EXAMPLES = int(os.environ.get("GENTRAIN_FUZZ_EXAMPLES", "100"))
#: Wall-clock bound of one example (seconds): every input is refused or accepted quickly.
BOUND_S = 30.0

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)

KEYS = [
    "model.name",
    "model.latent_dim",
    "model.hidden",
    "model.arch",
    "model.beta",
    "model.recon_loss",
    "data.name",
    "data.n",
    "data.size",
    "data.val_fraction",
    "data.limit",
    "data.root",
    "optim.algo",
    "optim.lr",
    "optim.betas",
    "optim.per_optimizer.disc.lr",
    "optim.per_optimizer.gen",
    "optim.scheduler",
    "trainer.epochs",
    "trainer.batch_size",
    "trainer.precision",
    "trainer.seed",
    "trainer.accumulate_grad_batches",
    "scaling.num_workers",
    "scaling.use_gpu",
    "run.name",
    "run.resume",
    "run.output_dir",
    "callbacks.early_stopping_metric",
    "tune.metric",
    "bogus",
    "trainer",
    "model",
]
WORDS = [
    "ae",
    "vae",
    "gan",
    "aegan",
    "shapes",
    "mnist",
    "image_folder",
    "adam",
    "sgd",
    "32",
    "bf16",
    "fp16",
    "mlp",
    "conv",
    "auto",
    "never",
    "must",
    "val/loss",
    "train/loss",
    "..",
    ".",
    "a/b",
    "",
    "null",
    "true",
    "~",
    "nan",
    "inf",
    "-inf",
    "1e400",
    "[1, 2]",
    "{a: 1}",
    "[&a [1], *a]",
    "'x'",
    "!!python/name:os.system",
    "名前",
]


def _value(tmp: Path) -> st.SearchStrategy[str]:
    scalars = st.one_of(
        st.integers(-3, 200).map(str),
        st.sampled_from([str(2**63), str(-(2**64)), "10**9"]),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.sampled_from(WORDS),
        st.text(max_size=12),
    )
    paths = st.sampled_from([str(tmp / "absent"), str(tmp / "empty"), str(tmp / "afile"), "a\x00b", str(tmp)])
    lists = st.lists(st.integers(-2, 64), max_size=4).map(lambda v: yaml.safe_dump(v, default_flow_style=True).strip())
    return st.one_of(scalars, paths, lists)


#: Values a field takes in earnest, so that many examples pass validation and reach the data and the model.
PLAUSIBLE: dict[str, list[str]] = {
    "model.name": ["ae", "vae", "gan", "aegan"],
    "model.latent_dim": ["1", "2", "8", "16"],
    "model.hidden": ["[8]", "[16, 8]", "[]"],
    "model.arch": ["mlp", "conv"],
    "data.size": ["8", "16", "28", "32"],
    "data.val_fraction": ["0", "0.1", "0.5", "0.9"],
    "data.limit": ["1", "9", "40"],
    "optim.algo": ["adam", "adamw", "sgd", "rmsprop"],
    "optim.lr": ["1e-3", "0.5", "1e-8"],
    "trainer.batch_size": ["1", "8", "32", "60"],
    "trainer.precision": ["32", "bf16"],
    "trainer.accumulate_grad_batches": ["1", "2", "8"],
    "run.resume": ["auto", "never", "must"],
    "run.name": ["r", "run-1", "a.b"],
    "callbacks.early_stopping_metric": ["val/loss", "train/loss"],
}


def _overrides(tmp: Path) -> st.SearchStrategy[list[str]]:
    plausible = st.sampled_from(sorted(PLAUSIBLE)).flatmap(
        lambda key: st.sampled_from(PLAUSIBLE[key]).map(lambda value: f"{key}={value}")
    )
    item = st.one_of(
        plausible,
        plausible,
        st.tuples(st.sampled_from(KEYS), _value(tmp)).map(lambda kv: f"{kv[0]}={kv[1]}"),
        st.text(max_size=16),  # anything at all, also words without '=' and options
    )
    return st.lists(item, max_size=5)


def _check(cli: Any, argv: list[str]) -> None:
    t0 = time.perf_counter()
    outcome = cli(argv)
    took = time.perf_counter() - t0
    event(f"exit {outcome.code}")
    assert took < BOUND_S, (argv, took)
    assert outcome.code in (0, 2), (argv, outcome)
    assert "Traceback" not in outcome.err + outcome.out, (argv, outcome.err)
    if outcome.code == 0:
        assert "config ok" in outcome.out, (argv, outcome)
    else:
        assert "error" in outcome.err, (argv, outcome.err)


def _safe_tmp(tmp_path: Path) -> Path:
    """A folder of paths the fuzzed values point at: absent, empty, a file (never the filesystem root)."""
    (tmp_path / "empty").mkdir(exist_ok=True)
    (tmp_path / "afile").write_text("x")
    return tmp_path


TMP = Path(tempfile.mkdtemp(prefix="gentrain-fuzz-"))


@FUZZ
@given(overrides=_overrides(TMP))
def test_fuzzed_overrides_exit_0_or_2(cli: Any, overrides: list[str]) -> None:
    tmp = _safe_tmp(TMP)
    # A fixed output directory last: a fuzzed one may be refused, never written (--check).
    _check(cli, ["fit", "--check", *TINY, *overrides, f"run.output_dir={tmp / 'out'}"])
    assert not (tmp / "out").exists()


def _documents(tmp: Path) -> st.SearchStrategy[bytes]:
    leaves = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(),
        st.text(max_size=10),
        st.sampled_from(WORDS),
    )
    trees = st.recursive(
        leaves,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
        max_leaves=12,
    )
    sections = st.fixed_dictionaries(
        {},
        optional={
            "model": st.dictionaries(st.sampled_from(["name", "latent_dim", "hidden", "bogus"]), trees, max_size=3),
            "data": st.dictionaries(st.sampled_from(["name", "n", "size", "val_fraction"]), trees, max_size=2),
            "trainer": st.dictionaries(st.sampled_from(["epochs", "batch_size", "seed"]), trees, max_size=2),
            "run": st.dictionaries(st.sampled_from(["name", "resume"]), trees, max_size=2),
            "extra": trees,
        },
    )
    dumped = sections.map(lambda d: yaml.safe_dump(d, allow_unicode=True).encode())
    # A valid config with a few plausible or hostile fields changed.
    earnest = st.dictionaries(st.sampled_from(sorted(PLAUSIBLE)), st.none(), max_size=4).flatmap(
        lambda keys: st.fixed_dictionaries({k: st.sampled_from(PLAUSIBLE[k]).map(yaml.safe_load) for k in keys})
    )
    valid = st.tuples(earnest, st.dictionaries(st.sampled_from(KEYS), leaves, max_size=1)).map(_nest)
    fragments = st.lists(
        st.sampled_from(
            [
                "model:",
                "  name: ae",
                "&a [1, 2]",
                "*a",
                "[",
                "]",
                "{",
                "}",
                "- x",
                ": :",
                "!!python/object:os",
                "\t",
                "---",
                "...",
                "? k",
                "%YAML 1.1",
                "\xff",
                "\x00",
                "'",
                '"',
                "#",
                "|",
                ">",
            ]
        ),
        max_size=12,
    ).map(lambda parts: "\n".join(parts).encode("utf-8", "surrogatepass"))
    return st.one_of(valid, valid, dumped, fragments, st.binary(max_size=64))


def _nest(parts: tuple[dict[str, Any], dict[str, Any]]) -> bytes:
    raw: dict[str, Any] = {"model": {"name": "ae", "hidden": [8], "latent_dim": 2}}
    for key, value in {**parts[0], **parts[1]}.items():
        *sections, last = key.split(".")
        node = raw
        for section in sections:
            child = node.setdefault(section, {})
            if not isinstance(child, dict):
                break
            node = child
        else:
            node[last] = value
    return yaml.safe_dump(raw, allow_unicode=True).encode()


@FUZZ
@given(document=_documents(TMP))
def test_fuzzed_yaml_documents_exit_0_or_2(cli: Any, document: bytes) -> None:
    tmp = _safe_tmp(TMP)
    path = tmp / "config.yaml"
    path.write_bytes(document)
    # The tiny data and output directory win over what the document says (overrides apply last).
    _check(cli, ["fit", str(path), "--check", "data.n=64", "data.size=16", f"run.output_dir={tmp / 'out'}"])
    assert not (tmp / "out").exists()
