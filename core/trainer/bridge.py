"""The Trainer's side of ``keras.Model.fit``: the Keras callbacks it hands to each ``fit`` call.

* :func:`epoch_bridge` runs the Trainer's per-epoch work (its callbacks, history, strategy step,
  plugin hooks) between the epochs of one multi-epoch ``fit`` call, and ends the call early when
  the phase ends or the strategy changes the trainable state;
* :func:`keras_run` carries the user's own Keras callbacks (TensorBoard, EarlyStopping,
  CSVLogger, ...) over the many ``fit`` calls of one :meth:`Trainer.fit`, so they see one run;
* :func:`quiet_end_of_data` hides a Keras warning that says nothing here.

The classes derive from ``keras.callbacks.Callback`` and are built on first use, so importing this
module does not import Keras.
"""

from __future__ import annotations

import contextlib
import functools
import time
import warnings
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .callbacks import Callback

if TYPE_CHECKING:  # pragma: no cover
    from .trainer import Trainer


@contextlib.contextmanager
def quiet_end_of_data() -> Iterator[None]:
    """Keras warns "input ran out of data" at the end of every first pass over a dataset of
    unknown length (the input pipeline drops undecodable images, so its length is unknown);
    each epoch here is a first pass, so the warning says nothing."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Your input ran out of data")
        yield


def epoch_bridge(trainer: Trainer, end: int, watch: Any = None) -> Any:
    """A Keras callback running ``trainer``'s per-epoch work up to epoch ``end`` (exclusive).
    With ``watch`` (the bridge of the same ``fit`` call) it is a watcher instead, placed after
    the user's Keras callbacks: a stop that the bridge did not ask for (Keras' EarlyStopping)
    ends the phase."""
    return _epoch_bridge_class()(trainer, end, watch)


def keras_run(callbacks: Sequence[Any]) -> Any:
    """One Keras callback forwarding to ``callbacks`` over all the ``fit`` calls of a run;
    :meth:`finish` ends the run (their ``on_train_end``)."""
    return _keras_run_class()(list(callbacks))


@functools.cache
def _epoch_bridge_class() -> Any:
    import keras

    class EpochBridge(keras.callbacks.Callback):  # type: ignore[misc]
        def __init__(self, trainer: Trainer, end: int, watch: Any = None) -> None:
            super().__init__()
            self.trainer = trainer
            self.end = end
            self.changed_ahead: bool | None = None
            self.started = 0.0
            base_hook = Callback.on_train_batch_end
            self.batch_callbacks = [
                cb
                for cb in trainer.callbacks
                if type(cb).on_train_batch_end is not base_hook
                and getattr(cb, "wants_batches", True)
            ]
            if self.batch_callbacks and watch is None:
                self.on_train_batch_end = self._batch_end  # only then a call per batch
            self.watch = watch
            self.stop_asked = False

        def _batch_end(self, batch: int, logs: Any = None) -> None:
            steps = (self.params or {}).get("steps")
            if steps is None:
                known = getattr(self.trainer.data, "steps_per_epoch", None)
                steps = known() if callable(known) else known
            values = {k: float(v) for k, v in (logs or {}).items() if np.ndim(v) == 0}
            self.trainer._call_callback_hooks(
                "on_train_batch_end", batch, steps, values, callbacks=self.batch_callbacks
            )

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            if self.watch is not None:
                return
            self.stop_asked = False
            self.started = time.perf_counter()
            self.trainer._call_callback_hooks("on_epoch_start", epoch)

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            trainer, strategy = self.trainer, self.trainer.strategy
            if self.watch is not None:
                if self.model.stop_training and not self.watch.stop_asked:
                    trainer._phase_done = True
                return
            values = {k: float(v) for k, v in (logs or {}).items()}
            values["seconds"] = round(time.perf_counter() - self.started, 4)
            trainer._after_epoch(epoch, values)
            if strategy.phase_complete(epoch + 1) or trainer.should_stop_phase:
                trainer._phase_done = True  # the Trainer ends the phase after this fit call
                self.model.stop_training = self.stop_asked = True
                return
            if not trainer.should_stop and epoch + 1 < self.end:
                signature = trainer.model.trainable_signature()
                changed = strategy.on_epoch_start(trainer.model, epoch + 1)
                if changed or trainer.model.trainable_signature() != signature:
                    self.changed_ahead = True  # a re-compile is due: end this fit call
                    self.model.stop_training = True
            if trainer.should_stop:
                self.model.stop_training = True
            self.stop_asked = bool(self.model.stop_training)
            trainer._call_callback_hooks("on_epoch_complete", epoch)

    return EpochBridge


@functools.cache
def _keras_run_class() -> Any:
    import keras

    class KerasCallbacks(keras.callbacks.Callback):  # type: ignore[misc]
        """The user's Keras callbacks over the many ``fit`` calls of one :meth:`Trainer.fit`
        (one per phase or segment): they see one training run, so ``on_train_begin`` runs once
        (EarlyStopping keeps its patience, CSVLogger its file) and ``on_train_end`` at the end."""

        def __init__(self, callbacks: list[Any]) -> None:
            super().__init__()
            self.callbacks = list(callbacks)
            self.started = False

        def set_model(self, model: Any) -> None:
            super().set_model(model)
            for cb in self.callbacks:
                cb.set_model(model)

        def set_params(self, params: Any) -> None:
            super().set_params(params)
            for cb in self.callbacks:
                cb.set_params(params)

        def on_train_begin(self, logs: Any = None) -> None:
            if not self.started:
                self.started = True
                for cb in self.callbacks:
                    cb.on_train_begin(logs)

        def on_train_end(self, logs: Any = None) -> None:
            """Deferred to :meth:`finish`."""

        def finish(self) -> None:
            for cb in self.callbacks:
                cb.on_train_end(None)

    def forward(name: str) -> Any:
        def method(self: Any, *args: Any, **kwargs: Any) -> None:
            for cb in self.callbacks:
                getattr(cb, name)(*args, **kwargs)

        method.__name__ = name
        return method

    for hook in (
        "on_epoch_begin", "on_epoch_end", "on_train_batch_begin", "on_train_batch_end",
        "on_test_begin", "on_test_end", "on_test_batch_begin", "on_test_batch_end",
    ):  # fmt: skip
        setattr(KerasCallbacks, hook, forward(hook))
    return KerasCallbacks
