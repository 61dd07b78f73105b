"""Every hook gentrain calls, grouped by phase.

Implementations are marked with :data:`engine.hookimpl` and may accept any
subset of a spec's arguments (pluggy passes them by name), so hooks can gain
arguments without breaking existing plugins.

Three kinds of hook live here:

* **registration** hooks run once per process, on every rank, right after the
  plugins are loaded; they fill a :class:`~engine.registry.Registry`;
* **factory** hooks (``firstresult``) stop at the first implementation that
  returns something other than ``None``;
* **event** hooks are broadcast to every plugin at a fixed point of the
  training loop; their return values are ignored. They run on **every rank**:
  an implementation that writes files or prints checks ``trainer.is_rank_zero``.

The order in which the loop fires the event hooks is written out as
pseudocode in the README ("The training loop") and checked by
``tests/engine/test_loop.py::test_hook_order``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import torch

    from engine.registry import Registry
    from engine.trainer import Trainer

PROJECT = "gentrain"
API_VERSION = "1"
"""The plugin API these hooks, :class:`engine.Model` and the registries make up.

A plugin declares the version it is written against as a module attribute
``gentrain_api = "1"`` (on the entry point's module, or on the plugin object);
the engine refuses a plugin that declares another version with a
:class:`~engine.errors.PluginError`. A plugin that declares none is loaded as
written against the current version. The number changes only when a change
would break existing plugins.
"""
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# ---------------------------------------------------------------------------
# registration hooks
# ---------------------------------------------------------------------------


@hookspec
def gentrain_register_models(registry: Registry[Any]) -> None:
    """Register model classes.

    Called once per process (on the driver and on every worker) after all
    plugins are loaded. Call ``registry.add(name, ModelClass, ModelConfigClass)``
    where ``ModelClass`` subclasses :class:`engine.Model` and
    ``ModelConfigClass`` is a ``@dataclass``.

    :param registry: the model registry; adding a name twice raises
        :class:`~engine.errors.PluginError` naming both plugins.
    """


@hookspec
def gentrain_register_losses(registry: Registry[Any]) -> None:
    """Register named loss functions that model configs refer to by name.

    Called once per process after all plugins are loaded. Call
    ``registry.add(name, fn, ConfigClass, kind=KIND, domain=DOMAIN)``; the
    built-in kinds and the signature each expects are listed in
    :mod:`engine.losses`. ``domain`` says what the loss's first argument is:
    ``logits``, ``probabilities`` (images in ``[0, 1]``) or ``features``;
    ``ConfigClass`` (optional) holds the loss's own parameters, passed to
    ``fn`` as keywords (``recon_loss: {name: huber, delta: 0.5}``).

    :param registry: the loss registry.
    """


@hookspec
def gentrain_register_datasets(registry: Registry[Any]) -> None:
    """Register datasets selected by ``data.name``.

    Called once per process after all plugins are loaded. Call
    ``registry.add(name, factory, ConfigClass)`` where
    ``factory(config, data) -> engine.ImageData | engine.StreamingData``: the
    whole dataset in memory, or a ``torch.utils.data.Dataset`` (map-style or
    iterable) with its ``DataSpec`` and length, read item by item
    (``data.loader`` decides how: :func:`engine.data.choose_loader`).

    :param registry: the dataset registry.
    """


@hookspec
def gentrain_register_options(registry: Registry[Any]) -> None:
    """Declare a plugin's own config options (as pytest plugins do in ``pytest_addoption``).

    Called once per process after all plugins are loaded, before any config is
    resolved. Options are frozen ``@dataclass`` classes, validated like the
    engine's sections (field-named errors, suggestions, bounds):

    * ``registry.add("wandb", plugin, WandbOptions)`` adds a top-level section
      ``wandb:``; read it back as ``trainer.config.section("wandb")``;
    * ``registry.add("csv_logger", plugin, CsvOptions, kind="callbacks")`` adds
      the class's fields to the shared ``callbacks:`` section
      (``trainer.config.callbacks.csv``); two plugins may not declare one field.

    :param registry: the option registry; its names are section names (or,
        with ``kind="callbacks"``, the contributing plugin's name).
    """


@hookspec
def gentrain_validation_metrics(config: Any) -> list[str] | None:
    """Name the metric keys a plugin will add at the end of validation for this run config.

    Called on the driver when ``tune.metric`` (or another metric option) is
    checked before anything starts: a key named here counts as reported, so
    ``tune.metric=val/frechet`` is accepted from config alone. Return ``None``
    or an empty list when the plugin adds nothing for this config.

    :param config: the resolved :class:`engine.RunConfig` of the run or search.
    """


# ---------------------------------------------------------------------------
# factory hooks
# ---------------------------------------------------------------------------


@hookspec(firstresult=True)
def gentrain_make_optimizer(name: str, params: list[torch.nn.Parameter], config: Any) -> torch.optim.Optimizer | None:
    """Build the optimizer called ``name`` of the model (``"gen"``, ``"disc"``, ...).

    Called once per optimizer on every rank, after the model is built and moved
    to its device and before any checkpoint is loaded. Stops at the first
    non-``None`` result; when every plugin returns ``None`` the engine builds
    the ``torch.optim`` class named by ``config.algo`` (:mod:`engine.optim`).

    :param name: the optimizer's name as returned by ``Model.param_groups()``.
    :param params: the parameters it updates.
    :param config: the resolved :class:`engine.OptimConfig` for it.
    :return: an optimizer, or ``None`` to leave it to the next plugin.
    """


# ---------------------------------------------------------------------------
# trainer events (broadcast, every rank, return ignored)
# ---------------------------------------------------------------------------


@hookspec
def gentrain_on_fit_start(trainer: Trainer) -> None:
    """Called once per run on every rank, after the model, optimizers and data
    are ready and any checkpoint is loaded, before the first epoch.

    ``trainer.epoch`` / ``trainer.step`` already hold the resumed position.

    :param trainer: the run's :class:`engine.Trainer` (``config``, ``model``,
        ``optimizers``, ``epoch``, ``step``, ``rank``, ``is_rank_zero``,
        ``run_dir``, ``metrics``; set ``should_stop`` to end the run).
    """


@hookspec
def gentrain_on_train_epoch_start(trainer: Trainer, epoch: int) -> None:
    """Called on every rank at the start of each training epoch.

    :param epoch: the 0-based epoch about to run.
    :param trainer: the run's :class:`engine.Trainer` (``config``, ``model``,
        ``optimizers``, ``epoch``, ``step``, ``rank``, ``is_rank_zero``,
        ``run_dir``, ``metrics``; set ``should_stop`` to end the run).
    """


@hookspec
def gentrain_on_train_batch_start(trainer: Trainer, step: int, batch: Any) -> None:
    """Called on every rank before each training step (one pass over all phases).

    :param step: the global 0-based step about to run.
    :param batch: the first batch the step will use, ``(images, labels)``.
    :param trainer: the run's :class:`engine.Trainer` (``config``, ``model``,
        ``optimizers``, ``epoch``, ``step``, ``rank``, ``is_rank_zero``,
        ``run_dir``, ``metrics``; set ``should_stop`` to end the run).
    """


@hookspec
def gentrain_on_before_optimizer_step(trainer: Trainer, phase: str, optimizer: torch.optim.Optimizer) -> None:
    """Called on every rank after a phase's backward pass (gradients synchronised
    and unscaled, not yet clipped) and before its optimizer steps.

    Inspect gradients here; do not step or zero the optimizer.

    :param phase: the phase name (``"train"``, ``"disc"``, ``"gen"``, ...).
    :param optimizer: the optimizer about to step.
    :param trainer: the run's :class:`engine.Trainer` (``config``, ``model``,
        ``optimizers``, ``epoch``, ``step``, ``rank``, ``is_rank_zero``,
        ``run_dir``, ``metrics``; set ``should_stop`` to end the run).
    """


@hookspec
def gentrain_on_train_batch_end(trainer: Trainer, step: int, losses: dict[str, torch.Tensor]) -> None:
    """Called on every rank after each training step.

    :param step: the global 0-based step that just ran.
    :param losses: detached scalar tensors of this rank, keys prefixed by phase
        (``"disc/loss"``, ``"gen/loss"``; a single-phase model's keys are bare).
        Converting them to floats synchronises the device: do it every few steps.

    :param trainer: the run's :class:`engine.Trainer` (``config``, ``model``,
        ``optimizers``, ``epoch``, ``step``, ``rank``, ``is_rank_zero``,
        ``run_dir``, ``metrics``; set ``should_stop`` to end the run).
    """


@hookspec
def gentrain_on_train_epoch_end(trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
    """Called on every rank at the end of each training epoch, after its
    validation pass (if one ran) and before its checkpoint is written.

    :param epoch: the 0-based epoch that just ended (``trainer.epoch`` is ``epoch + 1``).
    :param metrics: epoch means of the training losses averaged over ranks
        (``"train/..."``), the validation metrics (``"val/..."``), ``"epoch"``
        and ``"step"``: what is logged and reported to Ray.

    :param trainer: the run's :class:`engine.Trainer` (``config``, ``model``,
        ``optimizers``, ``epoch``, ``step``, ``rank``, ``is_rank_zero``,
        ``run_dir``, ``metrics``; set ``should_stop`` to end the run).
    """


@hookspec
def gentrain_on_validation_start(trainer: Trainer, epoch: int) -> None:
    """Called on every rank before the validation pass of an epoch.

    :param trainer: the run's :class:`engine.Trainer` (``config``, ``model``,
        ``optimizers``, ``epoch``, ``step``, ``rank``, ``is_rank_zero``,
        ``run_dir``, ``metrics``; set ``should_stop`` to end the run).
    :param epoch: the 0-based epoch whose end is being validated.
    """


@hookspec
def gentrain_on_validation_end(trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
    """Called on every rank after the validation pass of an epoch.

    :param metrics: the epoch's metrics so far: training means (``"train/..."``)
        and ``Model.validation_step`` outputs averaged over the whole validation
        set and over ranks (``"val/..."``). Plugins may add entries (a sample
        score, say), which are then logged and reported with the rest.
        Set ``trainer.should_stop = True`` to end training after this epoch.

    :param trainer: the run's :class:`engine.Trainer` (``config``, ``model``,
        ``optimizers``, ``epoch``, ``step``, ``rank``, ``is_rank_zero``,
        ``run_dir``, ``metrics``; set ``should_stop`` to end the run).
    :param epoch: the 0-based epoch whose end is being validated.
    """


@hookspec
def gentrain_on_save_checkpoint(trainer: Trainer, state: dict[str, Any]) -> None:
    """Called on every rank while a checkpoint is assembled, before rank 0 writes it.

    Store plugin state under ``state["plugin_state"][<your plugin name>]``
    (``state["plugins"]`` holds the name -> version of every loaded plugin; do
    not write there). Values must be tensors, numbers, strings, lists or dicts
    (checkpoints are read with ``torch.load(weights_only=True)``).

    :param trainer: the run's :class:`engine.Trainer` (model, optimizers, step, rank, config).
    :param state: the checkpoint dict being assembled.
    """


@hookspec
def gentrain_on_load_checkpoint(trainer: Trainer, state: dict[str, Any]) -> None:
    """Called on every rank after a checkpoint was loaded into the model,
    optimizers and RNGs, before ``gentrain_on_fit_start``.

    :param state: the checkpoint dict that was read.
    :param trainer: the run's :class:`engine.Trainer` (``config``, ``model``,
        ``optimizers``, ``epoch``, ``step``, ``rank``, ``is_rank_zero``,
        ``run_dir``, ``metrics``; set ``should_stop`` to end the run).
    """


@hookspec
def gentrain_on_fit_end(trainer: Trainer) -> None:
    """Called once on every rank after the last epoch (or an early stop), after
    the final checkpoint is written. Not called when training raised.

    :param trainer: the run's :class:`engine.Trainer` (``config``, ``model``,
        ``optimizers``, ``epoch``, ``step``, ``rank``, ``is_rank_zero``,
        ``run_dir``, ``metrics``; set ``should_stop`` to end the run).
    """


@hookspec
def gentrain_on_exception(trainer: Trainer, error: BaseException) -> None:
    """Called on every rank when training raises, before the error propagates.

    :param error: the exception; it is re-raised after all plugins ran.
    :param trainer: the run's :class:`engine.Trainer` (``config``, ``model``,
        ``optimizers``, ``epoch``, ``step``, ``rank``, ``is_rank_zero``,
        ``run_dir``, ``metrics``; set ``should_stop`` to end the run).
    """
