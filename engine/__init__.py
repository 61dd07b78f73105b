"""gentrain's engine: a plugin host for training generative models.

Everything that is a model, a loss or a training behaviour is a plugin. A
plugin is a module (or object) with functions marked :data:`hookimpl`, made
known through an entry point in the group ``gentrain``:

.. code-block:: toml

    # your package's pyproject.toml
    [project.entry-points.gentrain]
    mymodel = "mymodel.plugin"

.. code-block:: python

    # mymodel/plugin.py
    from dataclasses import dataclass
    import torch

    import engine

    gentrain_api = "1"  # the plugin API this module is written against (engine.API_VERSION)

    @dataclass(frozen=True)
    class TinyConfig(engine.ModelConfig):
        hidden: engine.PositiveInt = 32
        '''Width of the hidden layer (``gentrain plugins -v`` shows this line).'''

    class Tiny(engine.Model):
        '''A one-hidden-layer autoencoder.'''

        def __init__(self, config, data):
            super().__init__(config, data)
            self.net = torch.nn.Sequential(
                torch.nn.Linear(data.numel, config.hidden), torch.nn.ReLU(), torch.nn.Linear(config.hidden, data.numel)
            )

        def training_step(self, batch, phase):
            x, _ = batch
            return {"loss": torch.nn.functional.mse_loss(torch.sigmoid(self.net(x.flatten(1))), x.flatten(1))}

        def reconstruct(self, x):
            return torch.sigmoid(self.net(x.flatten(1))).view_as(x)

    @engine.hookimpl
    def gentrain_register_models(registry):
        registry.add("tiny_example", Tiny, TinyConfig)

Then ``gentrain plugins -v`` lists it and ``gentrain fit model.name=tiny_example`` trains
it; ``gentrain new-plugin NAME`` writes such a package with its tests
(``docs/plugins.md`` is the author's guide). The example runs as written
(``tests/engine/test_plugin_authoring.py`` executes it and trains it).
The hooks are documented in :mod:`engine.hookspecs`; what a model implements
in :class:`engine.Model`; the checks every model should pass in
:mod:`engine.testing`.
"""

from __future__ import annotations

from engine.api import FitResult, fit, prepare
from engine.config import (
    DataConfig,
    LossName,
    NonNegativeFloat,
    NonNegativeInt,
    OptimConfig,
    PositiveFloat,
    PositiveInt,
    Probability,
    RunConfig,
    resolve,
)
from engine.data import ImageData, StreamingData
from engine.errors import CheckpointError, ConfigError, DataError, GentrainError, PluginError, TrainingError, suggest
from engine.hookspecs import API_VERSION, hookimpl
from engine.load import LoadedRun, load
from engine.losses import get_loss
from engine.model import Batch, DataSpec, Model, ModelConfig, Phase
from engine.plugins import PluginManager, load_plugins
from engine.ray import TuneResult, tune
from engine.registry import Registry
from engine.trainer import Trainer, WorkerEnv

__version__ = "0.1.0"

__all__ = [
    "API_VERSION",
    "Batch",
    "CheckpointError",
    "ConfigError",
    "DataConfig",
    "DataError",
    "DataSpec",
    "FitResult",
    "GentrainError",
    "ImageData",
    "LoadedRun",
    "LossName",
    "Model",
    "ModelConfig",
    "NonNegativeFloat",
    "NonNegativeInt",
    "OptimConfig",
    "Phase",
    "PluginError",
    "PluginManager",
    "PositiveFloat",
    "PositiveInt",
    "Probability",
    "Registry",
    "RunConfig",
    "StreamingData",
    "Trainer",
    "TrainingError",
    "TuneResult",
    "WorkerEnv",
    "fit",
    "get_loss",
    "hookimpl",
    "load",
    "load_plugins",
    "prepare",
    "resolve",
    "suggest",
    "tune",
]
