"""``transferkit finetune``: fine-tune a backbone with a head on a folder of images.

The walk: image source -> stratified seeded train/validation/test split -> tf.data pipeline ->
backbone + head inside the :class:`~transferkit.trainer.Trainer`, a strategy plugin deciding what is
frozen in each phase. Everything lands in ``out``:

* ``model.keras`` -- the classifier, taking RGB 0..255 images, with its label names and
  preprocessing inside (:func:`load_finetuned`, in :mod:`transferkit.trainer.saved` beside its
  writer ``TransferModel.export``, reloads it; ``transferkit predict`` uses it);
* ``checkpoints/`` -- ``last.ckpt.npz`` (resume with ``resume=True``), ``best.weights.h5``,
  ``state.json``;
* ``history.csv``, ``history.json``, ``summary.json`` and ``curves.png`` (loss and accuracy per
  epoch, phase boundaries marked).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import outputs, registry
from ..errors import UsageError
from ..fitvalues import AUTO_LR, SWEEP_KEYS
from ..options import FinetuneOptions, LrFindOptions
from ..pooling import pool
from ..specs import NO_POOLING
from ..trainer.callbacks import Callback
from ..trainer.saved import MODEL_FILE, load_finetuned
from ..user_objects import backbone_spec

if TYPE_CHECKING:  # pragma: no cover
    from ..trainer import Trainer

__all__ = ["finetune", "predict_finetuned"]

log = logging.getLogger(__name__)

RUN_KIND = "finetune-run"  # the kind in a run folder's marker file
CHECKPOINT_DIR = "checkpoints"


def _strategy_options(
    strategy: Any, epochs: Any, learning_rate: Any, unfreeze_from: int | None
) -> dict[str, Any]:
    """The options for ``strategy`` (a ``StrategySpec``) from the command line's values."""
    options: dict[str, Any] = {}
    if epochs:
        options["epochs"] = list(epochs) if isinstance(epochs, list | tuple) else [epochs]
    if learning_rate:
        lrs = learning_rate if isinstance(learning_rate, list | tuple) else [learning_rate]
        options["learning_rate"] = [float(x) for x in lrs]
    if unfreeze_from is not None:
        if not strategy.metadata.get("takes_unfreeze_from"):
            takers = sorted(
                name
                for name, spec in registry.all_specs("strategy").items()
                if spec.metadata.get("takes_unfreeze_from")
            )
            raise UsageError(
                f"--unfreeze-from applies to the {' and '.join(takers)} strategies, "
                f"not {strategy.name!r}"
            )
        options["unfreeze_from"] = int(unfreeze_from)
    return options


def _augmentation_for(augment: str | None, task: str | None) -> str:
    """``classic`` by default; the augmentation a task's labels survive where its spec's
    metadata names one (``augment``: ``none`` for the rotation task, whose labels a flip or a
    rotation would corrupt, a flipped 90-degree rotation being a 270-degree one)."""
    only = registry.dataset(task).metadata.get("augment") if task else None
    if augment is None:
        return str(only or "classic")
    if only is not None and augment != only:
        log.warning(
            f"warning: --augment {augment} flips/rotates images, which changes the "
            f"labels of the {task} task; use --augment {only}"
        )
    return augment


def _input_paths(images: Any) -> list[str]:
    """The paths the run folder must stay clear of (the image folder, or a list and its images)."""
    from ..images import ImageSource, open_source
    from .extract import input_paths

    if isinstance(images, str | Path) and Path(images).is_dir():
        return [str(images)]
    source = images if isinstance(images, ImageSource) else open_source(images)
    return input_paths(source, images)


def _check_out(out: Path, resume: bool, overwrite: bool, images: Any = None) -> None:
    """Refuse a run folder that is or touches an input, or that holds files transferkit did not
    make (it may be new, empty, or a run folder with transferkit's marker). Touches nothing."""
    outputs.check_outside_inputs(out, _input_paths(images) if images is not None else [],
                                 "run folder")  # fmt: skip
    ckpt = out / CHECKPOINT_DIR / "last.ckpt.npz"
    if ckpt.exists() and not resume and not overwrite:
        raise UsageError(
            f"{out} holds a training checkpoint; pass --resume to continue it or --overwrite "
            "to start afresh"
        )
    if not (resume and ckpt.exists()):  # resuming a run made before run folders had markers
        outputs.check_folder(
            out, RUN_KIND, what="run folder", hint="(--overwrite replaces only a run folder "
            "that transferkit made)"
        )  # fmt: skip


def _prepare_out(out: Path, resume: bool, overwrite: bool, images: Any = None) -> None:
    """Check the run folder (:func:`_check_out`), delete the last run's files with ``overwrite``
    and mark the folder as a transferkit run folder."""
    _check_out(out, resume, overwrite, images)
    if overwrite and not resume and out.exists():
        with outputs.writing(out, "clear the run folder"):
            for name in (CHECKPOINT_DIR,):
                if (out / name).is_dir():
                    shutil.rmtree(out / name)
            for name in (MODEL_FILE, "history.csv", "history.json", "summary.json", "curves.png"):
                (out / name).unlink(missing_ok=True)
    outputs.mark_folder(out, RUN_KIND)


def finetune(
    images: Any, *, backbone: Any, out: str | Path, options: FinetuneOptions
) -> dict[str, Any]:
    """Fine-tune ``backbone`` with ``head`` on ``images`` and save the classifier in ``out``.

    ``backbone`` is a registered name, a ``transferkit.Backbone`` or a Keras model (taking RGB
    0..255 images); ``options`` are :class:`transferkit.options.FinetuneOptions`. Its ``callbacks``
    are added to transferkit's own: Trainer callbacks or Keras ones
    (``keras.callbacks.TensorBoard``, ``EarlyStopping``, ``CSVLogger``...); ``tensorboard`` is a
    log folder for a ``TensorBoard`` callback.

    ``images`` is a folder (one sub-folder per class), a CSV/JSON list, or an ``ImageSource``.
    ``augment`` defaults to ``flip`` with the default recipe below, else ``classic`` (``none`` with
    ``task="rotation"``). ``head`` defaults to
    ``linear`` (global average pooling, dropout, one dense layer). With the default
    ``warmup-unfreeze`` and that head, the schedule is today's practice (Adam, then the top blocks
    at a 10x lower rate, ``label_smoothing`` 0.1 unless given), with early stopping on the
    validation loss (``patience`` 3 unless given)
    and the best epoch's weights restored before the test and the export (``restore_best``);
    ``head="classic"`` brings the classic recipe's schedule too (RMSprop, then SGD; no early
    stopping unless ``patience`` is given). ``epochs`` and ``learning_rate`` are one value or one
    per phase of the strategy. ``probe_init`` (default: with that default recipe) starts the
    linear head from a logistic regression fitted on the frozen base's pooled features of the
    training images (linear probing, then fine-tuning: Kumar et al., ICLR 2022), so the warm-up
    begins at a linear probe rather than at random. ``test`` (a folder, a CSV/JSON
    list or an ``ImageSource`` of separate test images with the same class names) replaces the
    test part of ``split``: the images are then split into train and validation only. Returns a
    summary: ``model_path``, ``label_names``, ``phases`` (with the test accuracy after each),
    ``test_accuracy``, ``test_macro_f1`` and ``test_balanced_accuracy`` (of the exported
    weights, scored by :func:`transferkit.metrics.score` as ``train`` scores),
    ``restored_best_epoch``, ``epochs``, ``seconds``...
    """
    from ..recipe import FeatureRecipe
    from ..sizes import check_batch_fits

    # the backbone, its weights and the input size, parsed with the options: everything below
    # uses the recipe
    resume, overwrite, seed = options.resume, options.overwrite, options.seed
    augment, pooling, patience = options.augment, options.pooling, options.patience
    restore_best, probe_init = options.restore_best, options.probe_init
    label_smoothing = options.label_smoothing
    spec = backbone_spec(backbone)
    recipe = FeatureRecipe(spec.name, weights=options.weights, input_size=options.input_size)
    check_batch_fits(recipe.input_size, options.batch_size)  # before any folder is made
    from ..trainer.distribute import Distribution

    distribution = Distribution(options.distribute, options.devices)  # reads TF_CONFIG
    _check_out(Path(out), resume, overwrite, images)  # before TensorFlow loads
    outputs.check_writable(Path(out) / outputs.MARKER)
    from ..trainer import (
        EarlyStopping,
        LearningRateMonitor,
        ModelCheckpoint,
        Trainer,
        TransferModel,
        precision_scope,
        resolve_strategy,
        seed_everything,
    )
    from ..trainer.loggers import make_loggers, run_config, save_run_config

    start = time.perf_counter()
    out = Path(out)
    head = options.head or "linear"
    head_meta = registry.head(head).metadata  # an unknown head fails here, before any work
    strategy_spec = registry.strategy(options.strategy or "head-only")
    # what varies with the head and the strategy is in their specs' metadata: the pooling a head
    # wants, a head's own schedule (which the strategy takes if it offers it), and the defaults
    # of the recipe a strategy stands for (off when the head brings its own schedule)
    schedule = head_meta.get("schedule")
    defaults = {} if schedule else dict(strategy_spec.metadata.get("finetune_defaults", {}))
    if augment is None and not options.task:
        augment = defaults.get("augment")
    augment = _augmentation_for(augment, options.task)
    # the pooling a head asks for in its metadata (``none``: the feature map, which it pools
    # itself); a head that says nothing gets average-pooled vectors
    pooling = pooling or str(head_meta.get("pooling", "avg"))
    auto_lr = isinstance(options.learning_rate, tuple) and options.learning_rate[0] == AUTO_LR
    strategy_options = _strategy_options(
        strategy_spec, options.epochs, None if auto_lr else options.learning_rate,
        options.unfreeze_from,
    )  # fmt: skip
    if schedule and schedule in strategy_spec.metadata.get("schedules", ()):
        strategy_options["schedule"] = schedule
    strategy_obj = resolve_strategy(strategy_spec.name, **strategy_options)
    if restore_best is None:
        restore_best = bool(defaults.get("restore_best", False))
    if probe_init is None:
        probe_init = bool(defaults.get("probe_init", False))
    if patience is None:
        patience = defaults.get("patience")
    if label_smoothing is None:
        label_smoothing = float(defaults.get("label_smoothing", 0.0))
    if distribution.is_chief:  # the other workers of a multi-worker run write nothing
        _prepare_out(out, resume, overwrite, images)
    distribution.start()  # before TensorFlow sets its devices up (it may split the CPU)

    with precision_scope(options.precision), distribution.scope():
        # seeded once, before the data and the model are made; the Trainer does not reseed
        seed_everything(seed, deterministic=options.deterministic)
        data = _data_module(
            images, options.test, options.task, options.split, seed, options.batch_size, augment
        )
        network = spec.factory(weights=recipe.weights, input_size=recipe.input_size)
        if network.tokens is not None and pooling == NO_POOLING:
            # a head that pools a feature map itself gets a transformer's patch tokens averaged
            # by the host (the mean of the patch tokens, class and register tokens left out)
            pooling = "mean"
        built = pool(network, pooling)
        model = TransferModel(
            built,
            head,
            num_classes=data.num_classes,
            label_names=data.label_names,
            train_bn=options.train_bn,
            label_smoothing=label_smoothing,
        )
        has_val = bool(len(data.val_indices)) and options.limit_val_batches != 0
        if options.calibrate and not len(data.val_indices):  # said before the fit, not after
            raise UsageError("--calibrate fits the temperature on the validation split; give it "
                             "a validation fraction (--split)")  # fmt: skip
        checkpoint = ModelCheckpoint(out / CHECKPOINT_DIR, save_best=has_val)
        loggers = (
            make_loggers(options.logger, out, options.logger_dir, options.tensorboard)
            if distribution.is_chief
            else []
        )  # csv by default: history.csv and history.json
        own: list[Any] = [LearningRateMonitor(), checkpoint, *loggers]
        if patience and has_val:
            own.insert(0, EarlyStopping(patience=patience))
        if probe_init:
            own.insert(0, ProbeHead())
        cache = None
        if options.frozen_cache:
            from ..trainer.frozen_cache import FrozenCache

            # kept after the fit: the final scores and trust record read the base's outputs
            cache = FrozenCache(options.frozen_cache_memory, spill_dir=out, keep_after_fit=True)
            own.insert(0, cache)
        if distribution.is_chief:
            config = run_config(images, backbone, out, options)
            save_run_config(out, config, recipe.to_metadata(), loggers)
        trainer = Trainer(
            max_epochs=options.max_epochs,
            callbacks=[*own, *options.callbacks],
            seed=seed,
            reseed=False,
            precision=options.precision,
            deterministic=options.deterministic,
            enable_progress=options.progress,
            **_trainer_options(options, distribution),
        )
        if auto_lr or isinstance(options, LrFindOptions):
            found = _lr_find(trainer, model, data, strategy_obj, options, out, probe_init)
            if isinstance(options, LrFindOptions):
                return {**found, "seconds": round(time.perf_counter() - start, 3)}
            strategy_options["learning_rate"] = found["phase_learning_rates"]
            strategy_obj = resolve_strategy(strategy_spec.name, **strategy_options)
        try:  # the cache's rows (memory, spill files) go once the scores and trust record are
            # made, or when anything in between fails
            result = trainer.fit(model, data, strategy_obj, ckpt_path="last" if resume else None)
            best = out / CHECKPOINT_DIR / ModelCheckpoint.BEST
            restored = None
            if restore_best and has_val and best.exists():
                model.network.load_weights(best)
                restored = checkpoint.best_epoch
            # the final model's test scores, computed as train and spotcheck compute theirs
            cached = _CachedOutputs(cache, trainer)
            test_probs = cached("test") if len(data.test_indices) else None
            scores = (
                _test_scores(trainer, model, data, test_probs) if len(data.test_indices) else {}
            )
            calibration = _calibration(model, data, options.calibrate, cached)
            summary: dict[str, Any] = {
                "model_path": str(out / MODEL_FILE),
                "backbone": built.name,
                "head": head,
                "strategy": strategy_obj.name,
                "label_names": data.label_names,
                "data": data.describe(),
                "epochs": result["epochs"],
                "phases": result["phases"],
                "test_accuracy": scores.get("accuracy"),
                "test_macro_f1": scores.get("macro_f1"),
                "test_balanced_accuracy": scores.get("balanced_accuracy"),
                "restored_best_epoch": restored,  # numbered as in history.csv
                **calibration,
                "input_size": list(built.input_size),
                "preprocessing": built.preprocessing,
                "checkpoint": str(out / CHECKPOINT_DIR / ModelCheckpoint.LAST),
                "history": str(out / "history.csv"),
            }
            summary.update(replicas=result["replicas"], distribute=distribution.kind)
            if options.fast_dev_run or not distribution.is_chief:
                return _without_files(summary, options.fast_dev_run, distribution.is_chief, start)
            from . import finetune_trust

            kept = finetune_trust.trust_record(model, data, options, cached.batches)
        finally:
            if cache is not None:
                cache.release()
        summary.update(finetune_trust.describe(kept))
        model.export(
            out / MODEL_FILE,
            extra={
                "strategy": strategy_obj.name,
                "test_accuracy": summary["test_accuracy"],
                "backbone_spec": recipe.backbone,
                "pooling": built.pooling,
                **({"temperature": calibration["temperature"]} if options.calibrate else {}),
            },
            files={finetune_trust.TRUST_FILE: finetune_trust.record_bytes(kept)} if kept else None,
        )
        from ..trainer.curves import plot_curves

        curves = plot_curves(trainer.history, out / "curves.png")
        if curves is not None:
            summary["curves"] = str(curves)
        summary["seconds"] = round(time.perf_counter() - start, 3)
        outputs.atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, default=str))
        return summary


def _lr_find(
    trainer: Any,
    model: Any,
    data: Any,
    strategy: Any,
    options: FinetuneOptions,
    out: Path,
    probe_init: bool = False,
) -> dict[str, Any]:
    """The lr-find sweep of the first phase (``lr-find``, ``--learning-rate auto``), its plot
    and JSON in ``out``; ``phase_learning_rates``: the suggestion, then the later phases' rates (as
    given after ``auto``, else the strategy's own)."""
    from ..trainer.lr_find import save_lr_find

    sweep = options if isinstance(options, LrFindOptions) else LrFindOptions()
    start = (lambda t: _probe_head(t.model, t.data)) if probe_init else None  # as fit starts
    found = trainer.lr_find(
        model, data, strategy, start=start, **{k: getattr(sweep, k) for k in SWEEP_KEYS}
    )
    if found.suggestion is None:
        raise UsageError(
            "lr-find found no learning rate where the loss falls; widen --min-lr/--max-lr or "
            "give --learning-rate"
        )
    saved = save_lr_find(found, out) if trainer.is_chief else found.to_dict()
    rates = options.learning_rate
    given = list(rates)[1:] if isinstance(rates, tuple) else []
    later = given or [p.learning_rate for p in trainer.strategy.phases[1:]]
    saved["phase_learning_rates"] = [found.suggestion, *later][: max(1, len(strategy.phases))]
    log.info(f"learning rate {found.suggestion:.3g} from lr-find ({saved.get('plot', '')})")
    return saved


def _trainer_options(options: FinetuneOptions, distribution: Any) -> dict[str, Any]:
    """The Trainer's devices, distribution, debug-run and gradient options."""
    return {
        "strategy": distribution,
        "accumulate_grad_batches": options.accumulate_grad_batches,
        "gradient_clip_val": options.gradient_clip_val,
        "fast_dev_run": options.fast_dev_run,
        "limit_train_batches": options.limit_train_batches,
        "limit_val_batches": options.limit_val_batches,
        "overfit_batches": options.overfit_batches,
    }


def _without_files(
    summary: dict[str, Any], fast_dev_run: bool, chief: bool, start: float
) -> dict[str, Any]:
    """The summary of a run that writes no model: a fast dev run (it says so), or a worker of
    a multi-worker run other than the chief (the chief writes the files)."""
    summary.update(model_path=None, fast_dev_run=fast_dev_run, chief=chief)
    if fast_dev_run:
        log.warning("fast-dev-run: one batch per phase; no checkpoint and no model were written")
    summary["seconds"] = round(time.perf_counter() - start, 3)
    return summary


class ProbeHead(Callback):
    """Starts the head at the linear probe (:func:`_probe_head`) when the fit starts, on the
    data module as the Trainer set it up, before the first epoch; a fit resumed from a
    checkpoint keeps the checkpoint's head."""

    def on_fit_start(self, trainer: Trainer) -> None:
        if trainer.ckpt_path is None:
            from ..trainer.frozen_cache import FrozenCache

            caches = [c for c in trainer.callbacks if isinstance(c, FrozenCache)]
            features = caches[0].base_features(trainer) if caches else None
            _probe_head(trainer.model, trainer.data, features)


def _probe_head(model: Any, data: Any, features: tuple[Any, Any] | None = None) -> bool:
    """Set the last Dense layer of ``model``'s head to the linear probe of its own inputs: a
    multinomial ``LogisticRegression(C=1)`` (an L2 penalty) fitted on the frozen base's pooled
    features of the training images (no augmentation), as the network computes them, so the
    head starts at the optimum of the problem the warm-up solves. The features are not
    standardised: dividing each by its spread on the training images multiplies the channels
    that those images barely excite (spreads of 1e-4 on the 224 px digits: weights of 4e4,
    logits that explode under augmentation) and weights low-spread channels as much as the
    rest (on the photos' unseen tiles, 0.92 standardised against 0.95 unstandardised;
    ``bench/RESULTS.md``). Returns whether it did: only heads whose input to that layer is the
    pooled feature vector (``linear``, ``dense``). ``data`` must be set up for ``model``
    (``data.setup``, which the Trainer's ``fit`` does). ``features``: those pooled features
    and their labels already computed (the frozen-part cache's), in the order of the rows."""
    import keras
    from sklearn.linear_model import LogisticRegression

    layers = list(getattr(model.head, "layers", []))
    dense = layers[-1] if layers else None
    if not isinstance(dense, keras.layers.Dense) or any(
        isinstance(layer, keras.layers.Dense) for layer in layers[:-1]
    ):
        return False
    if features is not None:
        X, y = np.asarray(features[0], np.float64), np.asarray(features[1]).astype(np.int64)
    else:
        pooled, labels = [], []
        for images, batch_labels in data.dataset(np.sort(data.train_indices)):
            x = model.base(images, training=False)
            if len(x.shape) == 4:
                x = keras.ops.mean(x, axis=(1, 2))
            pooled.append(keras.ops.convert_to_numpy(x).astype(np.float64))
            labels.append(np.asarray(batch_labels).reshape(-1))
        X, y = np.concatenate(pooled), np.concatenate(labels).astype(np.int64)
    if len(np.unique(y)) < 2 or X.shape[1] != dense.kernel.shape[0]:
        return False
    from threadpoolctl import threadpool_limits

    # one BLAS thread: the products of a few hundred rows gain nothing from a second one, and
    # on 2 busy cores a fit of this size took 20 s with OpenBLAS's two threads, 0.14 s with one
    with threadpool_limits(limits=1, user_api="blas"):
        probe = LogisticRegression(C=1.0, max_iter=1000).fit(X, y)
    coef = probe.coef_ if len(probe.classes_) > 2 else np.vstack([-probe.coef_, probe.coef_]) / 2
    intercept = (
        probe.intercept_
        if len(probe.classes_) > 2
        else np.array([-probe.intercept_[0], probe.intercept_[0]]) / 2
    )
    k = int(dense.kernel.shape[1])
    kernel = np.zeros((X.shape[1], k))
    bias = np.full(k, -10.0)  # a class without training images stays improbable
    for row, label in enumerate(probe.classes_):
        kernel[:, int(label)] = coef[row]
        bias[int(label)] = intercept[row]
    dense.kernel.assign(kernel.astype(dense.kernel.dtype))
    dense.bias.assign(bias.astype(dense.bias.dtype))
    return True


def _data_module(
    images: Any,
    test: Any,
    task: str | None,
    split: Sequence[float],
    seed: int,
    batch_size: int,
    augment: Any,
) -> Any:
    """The data module: ``images`` split train/validation/test by ``split``, or with a separate
    ``test`` set, ``images`` split train/validation (the test fraction goes to training) and
    every image of ``test`` (same class names) as the test split."""
    from ..images import ImageSource, open_source
    from ..trainer import ImageDataModule
    from ..trainer.data import _split

    options = {"seed": seed, "batch_size": batch_size, "augment": augment}
    if test is None:
        return ImageDataModule(images, task=task, fractions=split, **options)
    if task:
        raise UsageError(
            f"--test cannot be combined with --task {task}: the task makes its own labels; "
            "leave out --test to split the images"
        )
    train_source, test_source = open_source(images), open_source(test)
    for source, where in ((train_source, images), (test_source, test)):
        if type(source).load is not ImageSource.load or type(source).plan is not ImageSource.plan:
            raise UsageError(f"--test needs plain image files; {where} makes its images itself")
    train_names, test_names = list(train_source.label_names), list(test_source.label_names)
    if train_names != test_names:
        raise UsageError(
            f"test images {test} have the classes {test_names}, training images {images} have "
            f"{train_names}; give both folders the same class sub-folders"
        )
    n = len(train_source.records)
    merged = ImageSource(
        list(train_source.records) + list(test_source.records),
        train_names,
        max_pixels=getattr(train_source, "max_pixels", None),
    )
    fractions = tuple(float(f) for f in split)
    if len(fractions) == 3:
        fractions = (fractions[0] + fractions[2], fractions[1])
    data = ImageDataModule(merged, fractions=(0.5, 0.5), **options)
    parts = _split(data.labels[:n], fractions, seed)
    data.train_indices = parts[0]
    data.val_indices = parts[1] if len(parts) > 1 else np.zeros(0, np.int64)
    data.test_indices = np.arange(n, len(merged.records), dtype=np.int64)
    data.fractions = fractions
    if not len(data.test_indices):
        raise UsageError(f"the test set {test} has no images")
    return data


def predict_finetuned(
    model_path: str | Path,
    paths: Sequence[str],
    *,
    batch_size: int = 32,
    top: int = 1,
    runtime: str = "keras",
    coverage: float | None = None,
) -> dict[str, Any]:
    """``transferkit predict`` for a fine-tuned classifier: the same output as for a classifier
    on features (one entry per image: label, probability, or the reason it was skipped).
    ``runtime`` other than ``keras``/``auto`` runs the classifier on that inference runtime.
    ``ood_score``, ``unfamiliar`` and, with ``coverage``, ``prediction_set`` come from the
    file's trust record (:mod:`transferkit.jobs.finetune_trust`)."""
    from ..images import ImageRecord, ImageSource
    from ..pipeline import skip_reason
    from .finetune_trust import trust_fields_of

    loaded = load_finetuned(model_path)
    names = loaded.label_names
    log.info(
        f"predicting {len(paths)} image(s) with the fine-tuned {loaded.metadata.get('backbone')}"
    )
    probs, rows, extra, said = trust_fields_of(loaded, list(paths), batch_size, runtime, coverage)
    by_row: dict[int, dict[str, Any]] = {}
    found = finetuned_answers(loaded, probs, extra, top)
    for row, entry in zip(rows.tolist(), found, strict=True):
        by_row[row] = {"path": paths[row], "status": "ok", **entry}
    source = ImageSource([ImageRecord(str(p), 0) for p in paths], names)
    results = [
        by_row.get(i) or {"path": path, "status": "skipped", "reason": skip_reason(source, i)}
        for i, path in enumerate(paths)
    ]
    return {
        "model": str(model_path),
        "classifier": f"finetuned {loaded.metadata.get('head', '')} head".strip(),
        "backbone": loaded.metadata.get("backbone"),
        "label_names": list(names),
        "predictions": results,
        **said,  # coverage, unfamiliar_threshold
    }


def finetuned_answers(
    loaded: Any, probs: np.ndarray, extra: dict[str, list[Any]], top: int
) -> list[dict[str, Any]]:
    """Each image's answer from a fine-tuned model's probabilities (before its ``--calibrate``
    temperature, applied here) and the per-image ``extra`` fields of its trust record:
    ``label``, ``index``, ``probability``, with ``top`` > 1 the ``top`` most probable classes
    (what ``predict`` gives an image, less its path and status)."""
    names = loaded.label_names
    if loaded.metadata.get("temperature") and len(probs):  # fitted by finetune --calibrate
        from ..trust import temper

        probs = temper(probs, float(loaded.metadata["temperature"]))
    found = []
    for i, p in enumerate(probs):
        label = int(np.argmax(p))
        entry: dict[str, Any] = {
            "label": names[label],
            "index": label,
            "probability": float(p[label]),
        }
        if top > 1:
            entry["top"] = [
                {"label": names[k], "probability": float(p[k])} for k in np.argsort(-p)[:top]
            ]
        entry.update({key: values[i] for key, values in extra.items()})
        found.append(entry)
    return found


def _calibration(model: Any, data: Any, calibrate: bool, cached: Any = None) -> dict[str, Any]:
    """``test_ece`` of the exported model's test probabilities (15 bins, as ``train`` reports
    it); with ``calibrate``, the head's ``temperature`` fitted on the validation split, the
    test ECE with it, and the one before as ``test_ece_before``. ``cached``: a
    :class:`_CachedOutputs` giving them from the frozen-part cache where it holds them."""
    from ..trainer.bridge import quiet_end_of_data
    from ..trust import ece, fit_temperature, temper

    def probabilities(dataset: Any) -> tuple[np.ndarray, np.ndarray]:
        probs, truth = [], []
        with quiet_end_of_data():
            for batch in dataset:
                probs.append(np.asarray(model.network(batch[0], training=False), dtype=float))
                truth.append(np.asarray(batch[1]).reshape(-1))
        return np.concatenate(probs), np.concatenate(truth).astype(int)

    found: dict[str, Any] = {}
    test = None
    if len(data.test_indices):
        test = (cached and cached("test")) or probabilities(data.test_dataset())
    if test is not None:
        found["test_ece"] = ece(*test)
    if calibrate:
        if not len(data.val_indices):
            raise UsageError("--calibrate fits the temperature on the validation split; give it "
                             "a validation fraction (--split)")  # fmt: skip
        val = (cached and cached("val")) or probabilities(data.val_dataset())
        found["temperature"] = fit_temperature(*val)
        if test is not None:
            found["test_ece_before"] = found["test_ece"]
            found["test_ece"] = ece(temper(test[0], found["temperature"]), test[1])
    return found


class _CachedOutputs:
    """The final model's probabilities on a split (``cached("test")``: ``(probabilities,
    labels)``, each split computed once) and the base's output batches
    (:meth:`batches`, for the trust record) from the frozen-part cache's rows, which the fit
    kept; None where the cache holds none (then the network runs over the images)."""

    def __init__(self, cache: Any, trainer: Any) -> None:
        self.cache, self.trainer = cache, trainer
        self.found: dict[str, tuple[np.ndarray, np.ndarray] | None] = {}

    def batches(self, split: str, rows: Any = None) -> Any:
        if self.cache is None:
            return None
        return self.cache.base_batches(self.trainer, split, rows)

    def __call__(self, split: str) -> tuple[np.ndarray, np.ndarray] | None:
        if split not in self.found:
            batches = self.batches(split)
            if batches is None:
                self.found[split] = None
            else:
                head = self.trainer.model.head
                probs, truth = [], []
                for x, y in batches:
                    probs.append(np.asarray(head(x, training=False), dtype=float))
                    truth.append(np.asarray(y).reshape(-1))
                self.found[split] = (np.concatenate(probs), np.concatenate(truth).astype(int))
        return self.found[split]


def _test_scores(
    trainer: Any, model: Any, data: Any, test: tuple[np.ndarray, np.ndarray] | None
) -> dict[str, float]:
    """The final model's test scores (as ``Trainer.score`` computes them), from ``test``,
    its probabilities and labels where the frozen-part cache gave them."""
    if test is None:
        return dict(trainer.score(model, data))
    from ..metrics import score

    return dict(score(test[1], test[0].argmax(-1), labels=range(data.num_classes)))
