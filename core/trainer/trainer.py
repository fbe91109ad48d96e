"""The ``Trainer``: fits a :class:`TransferModel` on a data module, phase by phase.

``fit`` is thin: it records what it was given and delegates to :meth:`Trainer._run_fit`; every
public entry point (``fit``, ``validate``, ``test``, ``predict``) runs through
:meth:`Trainer._call_and_handle`, the one place where a failure is reported to the plugins'
``on_exception`` hooks and to the callbacks, cleaned up, and re-raised.

Each epoch is one ``keras_model.fit`` call over that epoch's batches (the order is a function of
the seed and the epoch), so a strategy can change the model between any two epochs and a resumed
run continues exactly where the last checkpoint left off.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import plugin_manager
from ..errors import TransferkitError, UsageError
from .bridge import epoch_bridge, keras_run, quiet_end_of_data
from .callbacks import Callback, ModelCheckpoint, ProgressPrinter
from .checkpoint import Checkpoint, write_checkpoint
from .data import DataModule
from .distribute import as_distribution
from .frozen_cache import FrozenCache
from .limits import BatchLimits, gradient_options
from .model import TransferModel
from .precision import policy_name
from .seed import deterministic_ops, seed_everything
from .strategy import FinetuneStrategy

log = logging.getLogger(__name__)


def resolve_strategy(strategy: Any, **options: Any) -> FinetuneStrategy:
    """A strategy object from a registered name (with options) or an instance."""
    if strategy is None:
        strategy = "head-only"
    if isinstance(strategy, FinetuneStrategy):
        if options:
            raise UsageError("strategy options are given with a strategy name, not an instance")
        return strategy
    from .. import registry

    spec = registry.strategy(str(strategy))
    try:
        made = spec.factory(**options)
    except TypeError as exc:
        raise UsageError(
            f"strategy {spec.name!r} does not accept {sorted(options)}: {exc}"
        ) from exc
    if not isinstance(made, FinetuneStrategy):
        raise TransferkitError(
            f"strategy plugin {spec.plugin!r} returned {type(made).__name__} for {spec.name!r}; "
            "a strategy factory must return a transferkit.trainer.FinetuneStrategy"
        )
    return made


class Trainer:
    """Fits, validates, tests and predicts with a :class:`TransferModel`.

    ``max_epochs`` caps the total number of epochs over all phases (default: the strategy's own
    total). ``callbacks`` are :class:`~transferkit.trainer.callbacks.Callback` objects; a progress
    printer is added unless ``enable_progress=False``. ``seed`` seeds everything at the start of
    ``fit`` and the augmentation; ``reseed=False`` leaves the random state as the caller seeded
    it (:func:`~transferkit.trainer.seed_everything` before building the model, as the fine-tune
    job does), so a run is seeded once. ``deterministic=True`` also switches TensorFlow's op
    determinism on. ``precision`` is a training precision
    (:data:`~transferkit.trainer.precision.TRAINING_PRECISIONS`: ``32``, ``16-mixed``,
    ``bf16-mixed``).

    ``devices`` (``"auto"`` or N) and ``strategy`` (``"auto"``, ``"mirrored"``,
    ``"multi-worker"``: the ``tf.distribute`` strategy, see :mod:`transferkit.trainer.distribute`;
    not the fine-tune strategy that :meth:`fit` takes) place the training; build the model inside
    ``with trainer.scope():``. ``accumulate_grad_batches`` and ``gradient_clip_val`` go to each
    phase's optimizer; ``fast_dev_run``, ``limit_train_batches``, ``limit_val_batches`` (a count
    or a fraction) and ``overfit_batches`` make a debug run (:mod:`transferkit.trainer.limits`).
    """

    def __init__(
        self,
        max_epochs: int | None = None,
        callbacks: Sequence[Callback] = (),
        seed: int = 0,
        precision: str = "32",
        *,
        deterministic: bool = False,
        enable_progress: bool = True,
        jit_compile: Any = False,
        reseed: bool = True,
        devices: Any = "auto",
        strategy: Any = "auto",
        accumulate_grad_batches: int = 1,
        gradient_clip_val: float | None = None,
        fast_dev_run: bool = False,
        limit_train_batches: int | float | None = None,
        limit_val_batches: int | float | None = None,
        overfit_batches: int = 0,
    ) -> None:
        if max_epochs is not None and max_epochs < 0:
            raise UsageError(f"max_epochs must be 0 or more, got {max_epochs}")
        policy_name(precision)  # an unknown precision fails here
        self.max_epochs = max_epochs
        self.callbacks: list[Callback] = [c for c in callbacks if isinstance(c, Callback)]
        # Keras callbacks (TensorBoard, EarlyStopping, CSVLogger, ...) run inside Keras' fit
        self.keras_callbacks: list[Any] = [c for c in callbacks if not isinstance(c, Callback)]
        for cb in self.keras_callbacks:
            if not callable(getattr(cb, "set_model", None)):
                raise UsageError(
                    f"callback {cb!r} is neither a transferkit.trainer.Callback nor a Keras "
                    "callback (keras.callbacks.Callback)"
                )
        if enable_progress and not any(isinstance(c, ProgressPrinter) for c in self.callbacks):
            self.callbacks.append(ProgressPrinter())
        self.seed = int(seed)
        self.reseed = bool(reseed)
        self.precision = str(precision)
        self.deterministic = deterministic
        self.jit_compile = jit_compile
        self.distribution = as_distribution(strategy, devices)
        self.limits = BatchLimits(
            limit_train_batches, limit_val_batches, int(overfit_batches), bool(fast_dev_run)
        )
        if int(accumulate_grad_batches) < 1:
            raise UsageError(
                f"accumulate_grad_batches must be at least 1, got {accumulate_grad_batches}"
            )
        self.accumulate_grad_batches = int(accumulate_grad_batches)
        self.gradient_clip_val = gradient_clip_val
        if fast_dev_run and any(isinstance(c, ModelCheckpoint) for c in self.callbacks):
            log.info("fast-dev-run: no checkpoint is written")
            self.callbacks = [c for c in self.callbacks if not isinstance(c, ModelCheckpoint)]
        self._reset_state()

    def _reset_state(self) -> None:
        self.model: TransferModel = None  # type: ignore[assignment]
        self.data: DataModule = None  # type: ignore[assignment]
        self.strategy: FinetuneStrategy = None  # type: ignore[assignment]
        self.epoch = 0
        self.history: list[dict[str, Any]] = []
        self.phase_results: list[dict[str, Any]] = []
        self.should_stop = False
        self.should_stop_phase = False
        self._compiled: tuple[Any, ...] | None = None
        self._compiled_phase: int | None = None
        self._pending: Any = None
        self._phase_done = False
        self._keras_run: Any = None
        self._data_for: tuple[TransferModel, DataModule] | None = None
        self.ckpt_path: Path | None = None  # the checkpoint this fit resumed from
        self.where = ""

    # ------------------------------------------------------------------ public entry points

    def fit(
        self,
        model: TransferModel,
        data: DataModule,
        strategy: Any = None,
        *,
        ckpt_path: str | Path | None = None,
    ) -> dict[str, Any]:
        """Train ``model`` on ``data`` with ``strategy`` (a name or a ``FinetuneStrategy``;
        default ``head-only``). ``ckpt_path="last"`` resumes from the checkpoint callback's
        folder when a checkpoint is there; a path resumes from that file or folder."""
        self._reset_state()
        self.model, self.data = model, data
        self.strategy = resolve_strategy(strategy)
        return self._call_and_handle("fit", self._run_fit, ckpt_path)

    def lr_find(
        self, model: TransferModel, data: DataModule, strategy: Any = None, **sweep: Any
    ) -> Any:
        """The learning-rate range test for the first phase of ``strategy`` (see
        :mod:`transferkit.trainer.lr_find`: ``min_lr``, ``max_lr``, ``num_training``,
        ``early_stop_threshold``, and ``start``, called with the Trainer to set the run's start
        state before the sweep); the model is put back as it was. Returns an
        :class:`~transferkit.trainer.lr_find.LrFindResult` (``.suggestion``, the curve)."""
        self._reset_state()
        self.model, self.data = model, data
        self.strategy = resolve_strategy(strategy)
        return self._call_and_handle("lr_find", self._run_lr_find, sweep)

    def validate(self, model: TransferModel | None = None, data: DataModule | None = None) -> dict:
        """Loss and accuracy on the validation split."""
        return self._call_and_handle("validate", self._run_eval, model, data, "val")

    def test(self, model: TransferModel | None = None, data: DataModule | None = None) -> dict:
        """Loss and accuracy on the test split."""
        return self._call_and_handle("test", self._run_eval, model, data, "test")

    def score(
        self,
        model: TransferModel | None = None,
        data: DataModule | None = None,
        split: str = "test",
    ) -> dict[str, float]:
        """Accuracy, macro F1 and balanced accuracy of the model's predictions on a split
        (``"test"`` or ``"val"``), by :func:`transferkit.metrics.score` over the data module's
        classes: the numbers ``train`` and ``spotcheck`` report for stored features."""
        where = "validate" if split == "val" else "test"
        return self._call_and_handle(where, self._run_score, model, data, split)

    def predict(
        self, model: TransferModel | None = None, data: Any = None, split: str = "test"
    ) -> np.ndarray:
        """Class probabilities for a split of ``data`` (a data module), a ``tf.data`` dataset of
        preprocessed images, or an array of preprocessed images."""
        return self._call_and_handle("predict", self._run_predict, model, data, split)

    # ------------------------------------------------------------------ the one failure path

    def _call_and_handle(self, where: str, fn: Callable[..., Any], *args: Any) -> Any:
        self.where = where
        try:
            with self.distribution.scope():
                return fn(*args)
        except BaseException as exc:
            context = {
                "epoch": self.epoch,
                "phase": self._phase_name_or_none(),
                "model": getattr(getattr(self.model, "backbone", None), "name", None),
            }
            plugin_manager.notify_exception(exc, where, **context)
            self._call_callback_hooks("on_exception", exc, guard=True)
            self._teardown()
            raise

    # ------------------------------------------------------------------ the one dispatch

    def _call_callback_hooks(
        self,
        hook: str,
        *args: Any,
        callbacks: Sequence[Callback] | None = None,
        guard: bool = False,
    ) -> None:
        """Every moment of training reaches the callbacks here: each :class:`Callback`'s method
        ``hook`` (in the order given to the Trainer; ``callbacks`` narrows them), then, where a
        plugin hook of the same name exists (``PLUGIN_HOOKS``), the plugins' hook, so the two
        always fire at the same moments. ``guard``: a failing callback is logged instead of
        raised (while an error is already on its way)."""
        for cb in self.callbacks if callbacks is None else callbacks:
            if not guard:
                getattr(cb, hook)(self, *args)
                continue
            try:
                getattr(cb, hook)(self, *args)
            except Exception as cb_exc:  # a failing callback must not hide the error
                log.warning(f"callback {hook} failed: {cb_exc}")
        plugin_kwargs = PLUGIN_HOOKS.get(hook)
        if plugin_kwargs is not None:
            plugin_manager.call_lifecycle(hook, **plugin_kwargs(self, *args))

    def _teardown(self) -> None:
        self._pending = None
        self.should_stop = self.should_stop_phase = False

    # ------------------------------------------------------------------ fit

    def _run_fit(self, ckpt_path: str | Path | None) -> dict[str, Any]:
        model, data, strategy = self.model, self.data, self.strategy
        self._prepare_run(model, data, strategy)
        if self.limits.fast_dev_run:  # one epoch per phase
            for phase in strategy.phases:
                phase.epochs = min(int(phase.epochs), 1)
        self._call_callback_hooks("setup")

        if not self._restore(ckpt_path):
            strategy.freeze_before_training(model)
            strategy.skip_empty_phases(0)
        self._call_callback_hooks("on_fit_start")

        limit = self.planned_epochs
        current_phase: int | None = None
        changed_ahead: bool | None = None
        while not strategy.finished and self.epoch < limit and not self.should_stop:
            epoch = self.epoch
            if changed_ahead is None:
                changed = strategy.on_epoch_start(model, epoch)
            else:  # already applied at the end of the previous epoch, inside the last segment
                changed, changed_ahead = changed_ahead, None
            if strategy.phase_index != current_phase:
                current_phase = strategy.phase_index
                if self._phase_begins_now():  # not the phase a resumed fit continues
                    self._call_callback_hooks("on_phase_start", strategy.phase)
            self._compile_if_needed(changed)
            end = min(limit, strategy.phase_start_epoch + strategy.phase.epochs)
            changed_ahead = self._run_segment(epoch, end)
            if self._phase_done:
                self._phase_done = False
                self._end_phase()
                self._call_callback_hooks("on_epoch_complete", self.epoch - 1)

        if not strategy.finished and self._phase_has_epochs():
            self._end_phase()  # stopped by max_epochs or a callback: still report the phase
        result = self.result()
        if self._keras_run is not None:
            self._keras_run.finish()
        self._call_callback_hooks("on_fit_end", result)
        return result

    def _prepare_run(self, model: TransferModel, data: DataModule, strategy: Any) -> None:
        """What ``fit`` and ``lr_find`` do before their first step: the precision check, the
        seed, the data set up, the model checked against the devices and the data's classes,
        the augmentation, the strategy's setup."""
        self._check_precision(model)
        if self.reseed:
            seed_everything(self.seed, deterministic=self.deterministic)
        elif self.deterministic:
            deterministic_ops()
        self._setup_data()
        self.distribution.check_model(model.network)
        if data.num_classes != model.num_classes:
            raise UsageError(
                f"the data has {data.num_classes} classes but the model's head has "
                f"{model.num_classes}; build the model with num_classes={data.num_classes}"
            )
        model.set_augmentation(data.augmentation_layer(seed=self.seed))
        strategy.setup(model)

    def _run_lr_find(self, sweep: dict[str, Any]) -> Any:
        from .lr_find import run_lr_find

        self._prepare_run(self.model, self.data, self.strategy)
        return run_lr_find(self, **sweep)

    def _phase_begins_now(self) -> bool:
        return self.epoch == self.strategy.phase_start_epoch

    def _phase_has_epochs(self) -> bool:
        return self.epoch > self.strategy.phase_start_epoch

    def _end_phase(self) -> None:
        strategy = self.strategy
        phase = strategy.phase
        results: dict[str, Any] = {
            "phase": phase.name,
            "epochs": self.epoch - strategy.phase_start_epoch,
            "end_epoch": self.epoch,
            "early_stopped": bool(self.should_stop_phase),
        }
        if phase.evaluate_test and self._eval_dataset("test") is not None:
            scores = self._frozen_cache_test() or self._evaluate(self._eval_dataset("test"))
            results["test_loss"] = scores["loss"]
            results["test_accuracy"] = scores["accuracy"]
        self.phase_results.append(results)
        self._call_callback_hooks("on_phase_end", phase, results)
        self.should_stop_phase = False
        strategy.next_phase(self.epoch)
        strategy.skip_empty_phases(self.epoch)

    def _compile_if_needed(self, changed: bool) -> None:
        model, phase = self.model, self.strategy.phase
        key = (self.strategy.phase_index, model.trainable_signature(), id(model.keras_model))
        if not changed and key == self._compiled:
            return
        model.set_base_lr_multiplier(phase.base_lr_multiplier)
        optimizer = gradient_options(
            phase.make_optimizer(), self.accumulate_grad_batches, self.gradient_clip_val
        )
        model.compile(optimizer, jit_compile=self.jit_compile)
        self._compiled = key
        self._compiled_phase = self.strategy.phase_index
        if self._pending is not None:
            checkpoint, self._pending = self._pending, None
            if checkpoint.state.get("compiled_phase") == self.strategy.phase_index:
                self._restore_optimizer(checkpoint)

    def _restore_optimizer(self, checkpoint: Checkpoint) -> None:
        if not checkpoint.optimizer_arrays:
            return
        keras_model = self.model.keras_model
        optimizer = keras_model.optimizer
        if not optimizer.built:
            optimizer.build(keras_model.trainable_variables)
        checkpoint.restore_optimizer(optimizer.variables)

    def _run_segment(self, start: int, end: int) -> bool | None:
        """Train epochs ``start`` .. ``end - 1`` in one ``fit`` call when the data module can give
        their batches as one dataset (else one epoch per call). A Keras callback
        (:func:`~transferkit.trainer.bridge.epoch_bridge`) runs the per-epoch work and ends the
        call early when the phase ends or the strategy changes the trainable state. Returns
        whether the next epoch's strategy step was already applied (and changed the model), or
        None when it was not run."""
        cached = self._frozen_cache_segment(start, end)
        if cached is not None:  # the part above the frozen part, on its cached output
            keras_model, batches = cached
            segment = batches.train_segment(start, end)
            train_dataset, validation = batches.train_dataset, batches.val_dataset()
        else:
            keras_model = self.model.keras_model
            segment = None if self.limits.active else self.data.train_segment(start, end)
            train_dataset, validation = self._train_dataset, self._eval_dataset("val")
        if segment is None:
            end = start + 1
            dataset, steps = train_dataset(start), None
        else:
            dataset, steps = segment
        bridge = epoch_bridge(self, end)
        extra: list[Any] = []
        if self.keras_callbacks:
            if self._keras_run is None:
                self._keras_run = keras_run(self.keras_callbacks)
            extra = [self._keras_run, epoch_bridge(self, end, watch=bridge)]
        with quiet_end_of_data():
            keras_model.fit(
                dataset,
                validation_data=validation,
                initial_epoch=start,
                epochs=end,
                steps_per_epoch=steps,
                callbacks=[bridge, *extra],
                shuffle=False,
                verbose=0,
            )
        return bridge.changed_ahead

    def _frozen_cache_segment(self, start: int, end: int) -> tuple[Any, Any] | None:
        """``(training model, its batches)`` from a
        :class:`~transferkit.trainer.frozen_cache.FrozenCache` among the callbacks, where it
        applies to these epochs (the batches answer as the data module does); None: the whole
        network trains."""
        for cb in self.callbacks:
            if isinstance(cb, FrozenCache):
                return cb.segment(self, start, end)
        return None

    def _frozen_cache_test(self) -> dict[str, float] | None:
        """The test split's loss and accuracy on the frozen-part cache, where it applies."""
        for cb in self.callbacks:
            if isinstance(cb, FrozenCache):
                return cb.test_scores(self)
        return None

    def _train_dataset(self, epoch: int) -> Any:
        if self.limits.active:
            return self.limits.train_dataset(self.data, epoch)[0]
        return self.data.train_dataset(epoch)

    def _eval_dataset(self, split: str) -> Any:
        """The validation (``val``) or test batches, as a debug run limits them."""
        if self.limits.active:
            return self.limits.eval_dataset(self.data, split)
        return self.data.val_dataset() if split == "val" else self.data.test_dataset()

    def _after_epoch(self, epoch: int, logs: dict[str, float]) -> None:
        self._call_callback_hooks("on_epoch_end", epoch, logs)
        self.history.append({"epoch": epoch, "phase": self.strategy.phase.name, **logs})
        self.epoch = epoch + 1

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self, path: str | Path) -> None:
        """Write a checkpoint of this fit at ``path`` (``ModelCheckpoint`` calls it after each
        epoch): the model's and the optimizer's variables and :meth:`state_dict`, handed as
        plain values to :func:`~transferkit.trainer.checkpoint.write_checkpoint`."""
        keras_model = self.model.keras_model
        optimizer = keras_model.optimizer
        opt_vars = list(optimizer.variables) if optimizer is not None and optimizer.built else []
        write_checkpoint(
            Path(path),
            state=self.state_dict(),
            model_arrays=[np.asarray(v.numpy()) for v in keras_model.variables],
            optimizer_arrays=[np.asarray(v.numpy()) for v in opt_vars],
        )

    def _find_checkpoint(self, ckpt_path: str | Path | None) -> Path | None:
        if ckpt_path is None:
            return None
        if str(ckpt_path) == "last":
            cbs = [c for c in self.callbacks if isinstance(c, ModelCheckpoint)]
            if not cbs:
                raise UsageError('ckpt_path="last" needs a ModelCheckpoint callback')
            path = cbs[0].last_path
            return path if path.exists() else None
        path = Path(ckpt_path)
        if path.is_dir():
            path = path / ModelCheckpoint.LAST
        if not path.exists():
            raise UsageError(f"no checkpoint at {path}; check the path or drop the resume option")
        return path

    def _restore(self, ckpt_path: str | Path | None) -> bool:
        path = self._find_checkpoint(ckpt_path)
        if path is None:
            return False
        checkpoint = Checkpoint(path)
        state = checkpoint.state
        self.strategy.load_state_dict(state["strategy"])
        self.epoch = int(state["epoch"])
        self.history = list(state["history"])
        self.phase_results = list(state["phase_results"])
        by_key = state.get("callbacks", {})
        for cb in self.callbacks:
            if cb.state_key in by_key:
                cb.load_state_dict(by_key[cb.state_key])
        if not self.strategy.finished:
            self.strategy.on_epoch_start(self.model, self.epoch)
        checkpoint.restore_model(self.model.keras_model.variables)
        self._pending = checkpoint
        self.ckpt_path = path
        log.info(
            f"resuming from {path} at epoch {self.epoch + 1} "
            f"(phase {self._phase_name_or_none() or 'done'})"
        )
        return True

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "strategy": self.strategy.state_dict(),
            "compiled_phase": self._compiled_phase,
            "history": self.history,
            "phase_results": self.phase_results,
            "callbacks": {cb.state_key: cb.state_dict() for cb in self.callbacks},
            "seed": self.seed,
        }

    # ------------------------------------------------------------------ evaluation

    def _ensure_compiled(self, model: TransferModel) -> None:
        if getattr(model.keras_model, "optimizer", None) is None or not getattr(
            model.keras_model, "compiled", True
        ):
            model.compile("rmsprop")

    def _evaluate(self, dataset: Any) -> dict[str, float]:
        with quiet_end_of_data():
            scores = self.model.keras_model.evaluate(dataset, verbose=0, return_dict=True)
        return {k: float(v) for k, v in scores.items()}

    def _bind(self, model: TransferModel | None, data: Any) -> None:
        self.model = model or self.model
        self.data = data if data is not None else self.data
        if self.model is None:
            raise UsageError("pass a model (or call fit first)")
        if isinstance(self.data, DataModule):
            self._setup_data()

    def _setup_data(self) -> None:
        """Hand the data module the model's preprocessing and input size, once for each pair
        of model and data module (``fit`` sets up; ``score`` after it does not again)."""
        ready = self._data_for
        if ready is not None and ready[0] is self.model and ready[1] is self.data:
            return
        backbone = self.model.backbone
        resize = getattr(backbone, "resize", None)
        # a backbone's own resize, where it names one (a data module of its own need not know it)
        named = {} if resize is None or resize.is_default else {"resize": resize}
        self.data.setup(preprocess=backbone.preprocess, input_size=self.model.input_size, **named)
        self._data_for = (self.model, self.data)

    def _run_eval(self, model: TransferModel | None, data: DataModule | None, split: str) -> dict:
        self._bind(model, data)
        if self.data is None:
            raise UsageError("pass a data module (or call fit first)")
        dataset = self.data.val_dataset() if split == "val" else self.data.test_dataset()
        if dataset is None:
            raise UsageError(f"the data module has no {split} split; give it a {split} fraction")
        self._ensure_compiled(self.model)
        return self._evaluate(dataset)

    def _run_score(
        self, model: TransferModel | None, data: DataModule | None, split: str
    ) -> dict[str, float]:
        from ..metrics import score

        self._bind(model, data)
        if not isinstance(self.data, DataModule):
            raise UsageError("pass a data module (or call fit first)")
        dataset = self.data.val_dataset() if split == "val" else self.data.test_dataset()
        if dataset is None:
            raise UsageError(f"the data module has no {split} split; give it a {split} fraction")
        truth, predicted = [], []
        with quiet_end_of_data():
            for batch in dataset:
                probs = self.model.network(batch[0], training=False)
                predicted.append(np.asarray(probs).argmax(-1).reshape(-1))
                truth.append(np.asarray(batch[1]).reshape(-1))
        return score(
            np.concatenate(truth), np.concatenate(predicted), labels=range(self.data.num_classes)
        )

    def _run_predict(self, model: TransferModel | None, data: Any, split: str) -> np.ndarray:
        self._bind(model, data if isinstance(data, DataModule) else None)
        if isinstance(data, DataModule) or data is None:
            if self.data is None:
                raise UsageError("pass a data module, a dataset or an array of images")
            dataset = {
                "train": lambda: self.data.dataset(self.data.train_indices),
                "val": self.data.val_dataset,
                "test": self.data.test_dataset,
            }[split]()
            if dataset is None:
                raise UsageError(f"the data module has no {split} split")
            dataset = dataset.map(lambda x, *rest: x)
        else:
            dataset = data
        return np.asarray(self.model.network.predict(dataset, verbose=0))

    # ------------------------------------------------------------------ properties

    def _check_precision(self, model: TransferModel) -> None:
        want = policy_name(self.precision)
        have = model.head.dtype_policy.name if hasattr(model.head, "dtype_policy") else want
        if have != want:
            raise UsageError(
                f"the Trainer's precision is {self.precision!r} ({want}) but the model was built "
                f"with {have}; call transferkit.trainer.set_precision({self.precision!r}) before "
                "building the model"
            )

    @property
    def planned_epochs(self) -> int:
        total = self.strategy.total_epochs if self.strategy else 0
        return min(total, self.max_epochs) if self.max_epochs is not None else total

    @property
    def has_validation(self) -> bool:
        return self.data is not None and self.limits.has_validation(self.data)

    @property
    def is_chief(self) -> bool:
        """Whether this process writes checkpoints and files (see ``distribute.Distribution``)."""
        return self.distribution.is_chief

    @property
    def num_replicas(self) -> int:
        return self.distribution.replicas

    def scope(self) -> Any:
        """Build the model inside ``with trainer.scope():`` (its variables are then the
        distribution strategy's; a no-op without one)."""
        return self.distribution.scope()

    def _phase_name_or_none(self) -> str | None:
        if self.strategy is None or self.strategy.finished or not self.strategy.phases:
            return None
        return self.strategy.phase.name

    @property
    def phase_name(self) -> str:
        return self._phase_name_or_none() or ""

    @property
    def learning_rate(self) -> float:
        optimizer = self.model.keras_model.optimizer
        return float(np.asarray(optimizer.learning_rate)) if optimizer is not None else 0.0

    @property
    def base_lr_multiplier(self) -> float:
        return float(np.asarray(self.model.gradient_scale.multiplier))

    def result(self) -> dict[str, Any]:
        return {
            "epochs": self.epoch,
            "history": list(self.history),
            "phases": list(self.phase_results),
            "strategy": self.strategy.describe() if self.strategy else None,
            "replicas": self.num_replicas,
        }


# The Callback methods that are plugin hooks too (``core/hookspecs.py``), each with the hook's
# keyword arguments made from the method's: both fire at the same moments, from one dispatch.
PLUGIN_HOOKS: dict[str, Callable[..., dict[str, Any]]] = {
    "on_fit_start": lambda trainer: {
        "trainer": trainer,
        "model": trainer.model,
        "phase": trainer.phase_name,
    },
    "on_phase_start": lambda trainer, phase: {
        "trainer": trainer,
        "model": trainer.model,
        "phase": phase.name,
    },
    "on_epoch_end": lambda trainer, epoch, logs: {
        "trainer": trainer,
        "epoch": epoch,
        "logs": dict(logs),
        "phase": trainer.phase_name,
    },
    "on_fit_end": lambda trainer, result: {
        "trainer": trainer,
        "model": trainer.model,
        "history": result,
    },
}
