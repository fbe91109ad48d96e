"""The public Python functions under the command line. Each imports its job module on use."""

from __future__ import annotations

from typing import Any

from .errors import UsageError


def extract(images: Any, *, backbone: Any, out: Any, **options: Any) -> dict[str, Any]:
    """Extract features of ``images`` (a folder, a CSV/JSON list or an ``ImageSource``) with the
    backbone ``backbone`` (a name, a ``transferkit.Backbone`` or a Keras model taking RGB 0..255
    images) into the store ``out`` (``.h5``/``.hdf5``/``.zarr``).

    Options: ``store``, ``weights`` (``"default"``, ``"none"``, a path), ``pooling``
    (``avg``/``max``/``flatten``), ``input_size``, ``batch_size``, ``task`` (``"rotation"``),
    ``shuffle``, ``seed``, ``resume``, ``overwrite``, ``strict``, ``max_pixels``, ``progress``,
    ``runtime`` (``"auto"``, ``"keras"``, ``"openvino"``, ``"litert"``: what runs the network),
    ``precision`` (``"32"`` or ``"bf16"``), ``threads`` (the runtime's). ``scheduler`` (a Dask
    scheduler address, or ``"local"`` for a local cluster of ``jobs`` worker processes) writes
    the same store by shards of ``shard_rows`` images on the cluster's workers (Zarr only; see
    :mod:`transferkit.jobs.extract_dask`); without it, Dask is not imported.
    Returns a summary with ``path``, ``rows``, ``skipped``, ``skipped_files``, ``seconds``,
    ``images_per_second``, ``feature_dim`` and ``backbone``.
    """
    scheduler = options.pop("scheduler", None)
    if scheduler is not None:
        from .jobs.extract_dask import extract_on_cluster

        if options.pop("buffer_rows", None) is not None:  # a worker writes a whole shard at once
            raise UsageError("--buffer-rows is for one process; on a cluster use --shard-rows")

        return extract_on_cluster(
            images, backbone=backbone, out=out, scheduler=scheduler, **options
        )
    cluster_only = [k for k in ("jobs", "shard_rows") if options.pop(k, None) is not None]
    if cluster_only:
        raise UsageError("--jobs and --shard-rows go with --scheduler (a Dask cluster)")
    from .jobs.extract import extract as _extract

    return _extract(images, backbone=backbone, out=out, **options)


def extract_many(
    images: Any, *, backbone: Any, outs: Any, **options: Any
) -> dict[str, dict[str, Any]]:
    """Extract several poolings of one backbone in one pass of the network: ``outs`` maps each
    pooling to its store (``{"avg": "a.h5", "max": "m.h5"}``); each store equals what
    :func:`extract` with that pooling writes. Options as :func:`extract`'s (without
    ``pooling``). Returns each pooling's summary."""
    from .jobs.extract import extract_many as _extract_many

    return _extract_many(images, backbone=backbone, outs=outs, **options)


def train(store_path: Any, *, classifier: Any, **options: Any) -> dict[str, Any]:
    """Fit one classifier on a feature store (stratified split, or all rows scored on the store
    ``test``, checked to share the recipe and class names); optionally save it with ``out``.

    ``classifier`` is a name or your own scikit-learn/river estimator (cloned, then fitted);
    ``params={"C": 0.1}`` sets parameters of a named one, checked against its ``get_params()``.

    Returns accuracy, macro F1, the per-class report, fit seconds and ``model_path``.
    """
    from .jobs.train import train as _train

    return _train(store_path, classifier=classifier, **options)


def spotcheck(inputs: Any, **options: Any) -> dict[str, Any]:
    """Score every (features x classifier) pair in worker processes, with time-outs.

    ``inputs`` are feature stores, or one image folder with ``backbones=[...]`` (extracted once
    into a cache; names, ``transferkit.Backbone`` objects or Keras models). ``classifiers`` are
    names, groups and/or your own estimators; ``test`` scores on a separate test store instead of
    a split. Returns the report (rows, ``best_model``, ``best_accuracy``, ``best_features``);
    ``out`` writes report.json, report.csv, heatmap.png and report.html. ``scheduler`` (a Dask
    scheduler address, or ``"local"``) fans the pairs out over a Dask cluster instead of local
    worker processes.
    """
    from .jobs.spotcheck import spotcheck as _spotcheck

    scheduler = options.pop("scheduler", None)
    if scheduler:
        import functools

        from .jobs.spotcheck_dask import run_grid_dask

        options["runner"] = functools.partial(run_grid_dask, scheduler=scheduler)
    return _spotcheck(inputs, **options)


def stream(store_path: Any, *, classifier: Any = "softmax", **options: Any) -> dict[str, Any]:
    """Learn an incremental classifier batch by batch from a store that need not fit in memory.

    Reports progressive (test-then-train) accuracy every ``report_every`` samples, then the
    held-out accuracy (or that on the store ``test``); ``passes`` goes over the store several
    times; ``out`` saves the model for ``predict``.
    """
    from .jobs.stream import stream as _stream

    return _stream(store_path, classifier=classifier, **options)


def predict(model_path: Any, images: Any, **options: Any) -> dict[str, Any]:
    """Classify images with a model saved by ``train`` or ``stream`` (features made with the
    model's own recipe). A pickled (river) model needs ``trust=True``. ``runtime`` runs the
    backbone; ``precision``, when given, must be the model's own."""
    from .jobs.predict import predict as _predict

    return _predict(model_path, images, **options)


def demo(out: Any = "transferkit-demo", **options: Any) -> dict[str, Any]:
    """The whole flow offline on scikit-learn's digits: images, features, spot-check, train,
    predict. Returns what each step produced. ``runtime``/``precision`` run the backbone."""
    from .jobs.demo import demo as _demo

    return _demo(out, **options)


def finetune(images: Any, *, backbone: Any, out: Any, **options: Any) -> dict[str, Any]:
    """Fine-tune ``backbone`` with a head on ``images`` (a folder, a CSV/JSON list or an
    ``ImageSource``) with a strategy (``warmup-unfreeze`` by default) and save the classifier as
    ``out/model.keras``. Options: ``strategy``, ``head``, ``epochs``, ``learning_rate``,
    ``unfreeze_from``, ``augment``, ``batch_size``, ``input_size``, ``weights``, ``task``,
    ``split``, ``test`` (separate test images), ``seed``, ``patience``, ``max_epochs``,
    ``train_bn``, ``precision``, ``resume``, ``overwrite``, ``progress``, ``restore_best``,
    ``probe_init``, ``callbacks`` (Trainer or Keras callbacks), ``tensorboard`` (a log folder).
    ``backbone`` is a name, a ``transferkit.Backbone`` or a Keras model. Returns the phases with
    their test accuracy and ``model_path``.
    """
    from .jobs.finetune import finetune as _finetune

    return _finetune(images, backbone=backbone, out=out, **options)


def load_finetuned(path: Any) -> Any:
    """Reload a classifier saved by :func:`finetune`: ``.label_names``, ``.predict_proba``,
    ``.predict``, ``.predict_files``."""
    from .jobs.finetune import load_finetuned as _load

    return _load(path)
