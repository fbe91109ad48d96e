"""Every hook of transferkit, in one file: when it is called, its arguments, what it returns.

The names a plugin may import from the host are declared in :mod:`transferkit.plugin`.

Every hook is called with keyword arguments only; an implementation may accept any subset of a
hook's arguments (pluggy's opt-in arguments), so new arguments can be added later without breaking
plugins. Heavy types are imported only for type checking: reading this file never imports
TensorFlow.

Hooks are grouped by phase:

* registration: ``register_*`` hooks hand the plugin a ``register`` callback, called once per item;
* extraction: ``on_extract_start``, ``on_extract_batch``, ``on_extract_end``;
* training: ``on_fit_start``, ``on_phase_start``, ``on_epoch_end``, ``on_fit_end``;
* reporting: ``on_spotcheck_result``;
* errors: ``on_exception``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    import click

    from . import specs
    from .trainer import Trainer, TransferModel

PROJECT = "transferkit"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# --------------------------------------------------------------------------- registration


@hookspec
def register_backbones(register: Callable[[specs.BackboneSpec], None]) -> None:
    """Register feature-extraction backbones.

    Called once when the registry is first used. Call ``register(BackboneSpec(...))`` for each
    backbone the plugin offers; the return value is ignored.
    """


@hookspec
def register_feature_stores(register: Callable[[specs.StoreSpec], None]) -> None:
    """Register feature store formats (``StoreSpec``), each with the file suffixes it handles."""


@hookspec
def register_classifiers(register: Callable[[specs.ClassifierSpec], None]) -> None:
    """Register classifiers on feature vectors (``ClassifierSpec``).

    Set ``incremental=True`` for estimators that learn batch by batch and ``groups`` for the
    spot-check groups (``classic``, ``fast``, ...) the classifier belongs to.
    """


@hookspec
def register_finetune_strategies(register: Callable[[specs.StrategySpec], None]) -> None:
    """Register fine-tune strategies (``StrategySpec``) for the Trainer."""


@hookspec
def register_datasets(register: Callable[[specs.DatasetSpec], None]) -> None:
    """Register image sources and task transforms (``DatasetSpec``), e.g. ``image-folder`` or the
    ``rotation`` task."""


@hookspec
def register_heads(register: Callable[[specs.HeadSpec], None]) -> None:
    """Register classification heads (``HeadSpec``) that fine-tuning can put on a backbone."""


@hookspec
def register_runtimes(register: Callable[[specs.RuntimeSpec], None]) -> None:
    """Register inference runtimes (``RuntimeSpec``) that run a backbone's feature model.

    Called once when the registry is first used. Each spec says which precisions it offers,
    how to tell whether it can run here (``check``), how to convert the backbone's SavedModel
    (``convert``, cached by the host) and how to build the forward callable (``factory``).
    ``--runtime NAME`` picks one; ``auto`` tries those with an ``auto_order``, lowest first.
    """


@hookspec
def register_loggers(register: Callable[[specs.LoggerSpec], None]) -> None:
    """Register loggers of fine-tune runs (``LoggerSpec``), chosen with ``finetune --logger NAME``
    (several at once). Each spec's ``factory(out, location)`` returns a Trainer callback (a
    ``transferkit.plugin.Logger`` also receives the run's configuration and recipe through
    ``log_config``) or a Keras callback; ``location`` is ``--logger-dir`` (None: the logger's
    default inside the run folder ``out``). Only the chief of a multi-worker run logs.
    """


@hookspec
def register_keras_objects(register: Callable[..., None]) -> None:
    """Register the Keras classes (layers, models) that this plugin's backbones or heads put
    into a saved ``.keras`` model, so that transferkit can load such a model again.

    Called when transferkit loads a Keras model (``load_finetuned``, ``predict`` on a fine-tuned
    model), never at start-up, so importing Keras here is fine. Call ``register(cls)`` for a class
    (known under its ``keras.saving.get_registered_name``, ``package>Name``), or
    ``register(make_class, name="package>Name")`` with a function returning the class, called
    only when a model being loaded holds that name (for classes that are costly to define).
    """


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add commands to the ``transferkit`` command line.

    ``cli`` is the root ``click.Group``; decorate new commands with ``@cli.command()``.
    """


# --------------------------------------------------------------------------- extraction


@hookspec
def on_extract_start(backbone: str, total: int, output: str, config: Mapping[str, Any]) -> None:
    """Called before the first image is read, once per output store (an extraction of several
    poolings from one pass of the network writes several).

    ``backbone`` is the backbone name, ``total`` the number of images to process (after resume),
    ``output`` the store path and ``config`` the full extraction settings.
    """


@hookspec
def on_extract_batch(rows_written: int, total: int, batch_size: int, skipped: int) -> None:
    """Called after each batch is written to the store (to every store, when one pass writes
    several poolings).

    ``rows_written`` counts rows in the store so far, ``skipped`` the files skipped so far.
    """


@hookspec
def on_extract_end(output: str, summary: Mapping[str, Any]) -> None:
    """Called once a store is complete (once per store); ``summary`` is what
    ``transferkit.extract`` returns."""


# --------------------------------------------------------------------------- training


@hookspec
def on_fit_start(trainer: Trainer, model: TransferModel, phase: str) -> None:
    """Called once per ``Trainer.fit``, before its first epoch (after a checkpoint is restored, on
    a resume); ``phase`` is the name of the strategy's phase the fit starts in.

    Fires at the same moment as ``Callback.on_fit_start``.
    """


@hookspec
def on_phase_start(trainer: Trainer, model: TransferModel, phase: str) -> None:
    """Called when a phase of the strategy begins its first epoch (``phase`` is its name).

    A fit resumed in the middle of a phase does not call it for that phase (it began in the run
    that was interrupted; ``on_fit_start`` names it). Fires with ``Callback.on_phase_start``.
    """


@hookspec
def on_epoch_end(trainer: Trainer, epoch: int, logs: Mapping[str, float], phase: str) -> None:
    """Called at the end of each training epoch with Keras' ``logs`` (loss, metrics)."""


@hookspec
def on_fit_end(trainer: Trainer, model: TransferModel, history: Mapping[str, Any]) -> None:
    """Called after the last phase, with the whole training history."""


# --------------------------------------------------------------------------- reporting


@hookspec
def on_spotcheck_result(row: Mapping[str, Any]) -> None:
    """Called once for each (backbone x classifier) row of a spot-check as soon as it is known.

    ``row`` has ``backbone``, ``classifier``, ``status`` (``ok``/``failed``/``timeout``),
    ``accuracy``, ``macro_f1``, ``balanced_accuracy``, ``fit_seconds``, ``predict_seconds`` and
    ``error``.
    """


# --------------------------------------------------------------------------- errors


@hookspec
def on_exception(exception: BaseException, where: str, context: Mapping[str, Any]) -> None:
    """Called when a job fails, before the exception propagates.

    ``where`` names the job (``extract``, ``fit``, ``spotcheck``...), ``context`` holds what it was
    doing. Implementations must not raise.
    """
