"""``gentrain new-plugin NAME``: a plugin package that installs, registers and passes its own tests.

It writes::

    gentrain-NAME/
      pyproject.toml              the entry point  [project.entry-points.gentrain] NAME = "gentrain_NAME"
      README.md                   install, test, train, publish
      gentrain_NAME/__init__.py   the hook implementations and ``gentrain_api``
      gentrain_NAME/model/        config.py (the fields, documented) and model.py (the model)
      gentrain_NAME/py.typed
      tests/test_NAME.py          engine.testing.ModelContract, the DDP check included
"""

from __future__ import annotations

import keyword
from pathlib import Path

from engine.errors import ConfigError

_PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "gentrain-{name}"
version = "0.1.0"
description = "A gentrain plugin: the {name} model."
readme = "README.md"
requires-python = ">=3.10"
dependencies = ["gentrain"]

[project.optional-dependencies]
test = ["gentrain[test]"]

# gentrain finds the plugin through this entry point (group "gentrain").
[project.entry-points.gentrain]
{name} = "gentrain_{name}"

[tool.setuptools.packages.find]
include = ["gentrain_{name}*"]

[tool.setuptools.package-data]
gentrain_{name} = ["py.typed"]
"""

_INIT = '''\
"""The gentrain plugin ``{name}``: registers the ``{name}`` model."""

from __future__ import annotations

from typing import Any

import engine
from gentrain_{name}.model import {cls}, {cls}Config

gentrain_api = "{api}"
"""The gentrain plugin API this package is written against (checked when gentrain loads it)."""

__all__ = ["{cls}", "{cls}Config", "gentrain_api", "gentrain_register_models"]


@engine.hookimpl
def gentrain_register_models(registry: engine.Registry[Any]) -> None:
    registry.add("{name}", {cls}, {cls}Config)
'''

_MODEL_INIT = '''\
"""The ``{name}`` model and its config."""

from gentrain_{name}.model.config import {cls}Config
from gentrain_{name}.model.model import {cls}

__all__ = ["{cls}", "{cls}Config"]
'''

_CONFIG = '''\
"""The fields of ``model.*`` when ``model.name={name}``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import engine


@dataclass(frozen=True)
class {cls}Config(engine.ModelConfig):
    """An MLP autoencoder; every field is validated before training and listed by ``gentrain plugins -v``."""

    latent_dim: engine.PositiveInt = 16
    """Size of the code."""
    hidden: tuple[engine.PositiveInt, ...] = (128,)
    """Hidden layer sizes of the encoder (the decoder mirrors them); write [128] on the command line."""
    recon_loss: Annotated[str, engine.LossName("reconstruction", takes="logits")] = "bce"
    """A reconstruction loss (``gentrain plugins -v`` lists them); one on images gets a sigmoid of the logits."""

    def check(self, data: engine.DataSpec) -> None:
        """Rules that need the data, checked before training (``data.train_size``, ``batch_size`` are set)."""
        if self.latent_dim >= data.numel:
            raise self.fail("latent_dim", self.latent_dim, f"must be below the {{data.numel}} pixels of an image")
'''

_MODEL = '''\
"""The ``{name}`` model: written against gentrain's public API only."""

from __future__ import annotations

import torch
from torch import Tensor, nn

import engine
from gentrain_{name}.model.config import {cls}Config


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class {cls}(engine.Model):
    """An MLP autoencoder: ``x -> z -> logits``; losses are batch means of per-image losses (DDP-safe)."""

    config: {cls}Config

    def __init__(self, config: {cls}Config, data: engine.DataSpec) -> None:
        super().__init__(config, data)
        sizes = [data.numel, *config.hidden, config.latent_dim]
        self.encoder = nn.Sequential(nn.Flatten(), _mlp(sizes))
        self.decoder = _mlp(sizes[::-1])
        self.recon = engine.get_loss(config.recon_loss, "reconstruction", takes="logits", field="model.recon_loss")

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z).view(-1, *self.data.shape)

    def training_step(self, batch: engine.Batch, phase: str) -> dict[str, Tensor]:
        x, _ = batch
        loss = self.recon(self.decode(self.encoder(x)), x).mean()
        return {{"loss": loss}}

    def validation_step(self, batch: engine.Batch) -> dict[str, Tensor]:
        x, _ = batch
        logits = self.decode(self.encoder(x))
        mse = (torch.sigmoid(logits) - x).pow(2).flatten(1).sum(1).mean()
        return {{"recon": self.recon(logits, x).mean(), "mse": mse}}

    def reconstruct(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.decode(self.encoder(x)))

    def sample(self, n: int, labels: Tensor | None = None) -> Tensor:
        return torch.sigmoid(self.decode(torch.randn(n, self.config.latent_dim, device=self.device)))
'''

_TEST = '''\
"""gentrain's model contract for ``{name}``: shapes, finite losses, learning, state dicts, DDP."""

from engine.testing import ModelContract


class Test{cls}(ModelContract):
    model = "{name}"
'''

_README = """\
# gentrain-{name}

A [gentrain](https://github.com/) plugin: the `{name}` model.

```bash
pip install -e '.[test]'          # registers the plugin through its entry point
gentrain plugins -v               # lists {name} with its fields
pytest tests                      # gentrain's model contract, the DDP check included
gentrain fit model.name={name} data.name=shapes trainer.epochs=1
```

- `gentrain_{name}/model/config.py`: the fields (`model.latent_dim=8`), documented by the
  string under each field.
- `gentrain_{name}/model/model.py`: the model; losses are batch means of per-image losses and
  noise comes from `self.batch_randn`, so 2 workers × B train like 1 × 2B.
- `gentrain_{name}/__init__.py`: the hook implementations and `gentrain_api = "{api}"`, the
  plugin API version gentrain checks when it loads the plugin.

Publish: `python -m build && twine upload dist/*`; users `pip install gentrain-{name}`.
"""


def new_plugin(name: str, where: Path) -> Path:
    """Write the package ``gentrain-<name>`` under ``where``; return its folder.

    :raises ConfigError: ``name`` is not a lowercase identifier, or the folder exists and is not empty.
    """
    from engine.hookspecs import API_VERSION

    if not name.isidentifier() or keyword.iskeyword(name) or name != name.lower():
        raise ConfigError.one("NAME", name, "must be a lowercase Python identifier, e.g. wae or beta_tcvae")
    root = Path(where) / f"gentrain-{name}"
    if root.exists() and any(root.iterdir()):
        raise ConfigError.one("--dir", str(where), f"{root} exists and is not empty")
    cls = "".join(part.capitalize() for part in name.split("_")) or name
    values = {"name": name, "cls": cls, "api": API_VERSION}
    files = {
        "pyproject.toml": _PYPROJECT,
        "README.md": _README,
        f"gentrain_{name}/__init__.py": _INIT,
        f"gentrain_{name}/py.typed": "",
        f"gentrain_{name}/model/__init__.py": _MODEL_INIT,
        f"gentrain_{name}/model/config.py": _CONFIG,
        f"gentrain_{name}/model/model.py": _MODEL,
        f"tests/test_{name}.py": _TEST,
    }
    for rel, template in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(template.format(**values))
    return root
