"""The public Python functions under the command line. Each imports its job module on use."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from .options import (
    AuditOptions,
    DemoOptions,
    ExportOptions,
    ExtractOptions,
    FinetuneOptions,
    LrFindOptions,
    Options,
    PredictOptions,
    ServeOptions,
    SpotcheckOptions,
    StreamOptions,
    TrainOptions,
    UnknownOptionError,
)

F = TypeVar("F", bound=Callable[..., Any])


def takes(options: type[Options], *, skip: Sequence[str] = ()) -> Callable[[F], F]:
    """Give a public function that takes ``**values`` of ``options`` the signature and the
    documentation of those options: one keyword argument per field, typed, with its default
    and help (``help(transferkit.extract)``, IDEs, ``inspect.signature``)."""

    def decorate(func: F) -> F:
        signature = inspect.signature(func)
        params = [
            p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD
        ]
        types = options.types()
        fields = [f for f in dataclasses.fields(options) if f.name not in skip]
        params += [
            inspect.Parameter(
                f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=types[f.name]
            )
            for f in fields
        ]
        func.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        lines = [
            f"    ``{f.name}`` (default ``{f.default!r}``): {f.metadata['help']}" for f in fields
        ]
        func.__doc__ = (
            f"{inspect.cleandoc(func.__doc__ or '')}\n\n"
            f"Options, as keyword arguments or one ``options`` "
            f"(:class:`transferkit.options.{options.__name__}`):\n\n" + "\n".join(lines)
        )
        return func

    return decorate


@takes(ExtractOptions)
def extract(
    images: Any,
    *,
    backbone: Any,
    out: Any,
    options: ExtractOptions | None = None,
    **values: Any,
) -> dict[str, Any]:
    """Extract features of ``images`` (a folder, a CSV/JSON list or an ``ImageSource``) with the
    backbone ``backbone`` (a name, a ``transferkit.Backbone`` or a Keras model taking RGB 0..255
    images) into the store ``out`` (``.h5``/``.hdf5``/``.zarr``).

    A ``scheduler`` (a Dask scheduler address, or ``"local"`` for a local cluster of ``jobs``
    worker processes) writes the same store by shards of ``shard_rows`` images on the cluster's
    workers (Zarr only; see :mod:`transferkit.jobs.extract_dask`); without it, Dask is not
    imported. Returns a summary with ``path``, ``rows``, ``skipped``, ``skipped_files``,
    ``seconds``, ``images_per_second``, ``feature_dim`` and ``backbone``.
    """
    opts = ExtractOptions.of(options, values)
    if opts.scheduler is not None:
        from .jobs.extract_dask import extract_on_cluster

        return extract_on_cluster(images, backbone=backbone, out=out, options=opts)
    from .jobs.extract import extract as _extract

    return _extract(images, backbone=backbone, out=out, options=opts)


_NOT_MANY = ("pooling", "scheduler", "jobs", "shard_rows")


@takes(ExtractOptions, skip=_NOT_MANY)
def extract_many(
    images: Any,
    *,
    backbone: Any,
    outs: Any,
    options: ExtractOptions | None = None,
    **values: Any,
) -> dict[str, dict[str, Any]]:
    """Extract several poolings of one backbone in one pass of the network: ``outs`` maps each
    pooling to its store (``{"avg": "a.h5", "max": "m.h5"}``); each store equals what
    :func:`extract` with that pooling writes. Returns each pooling's summary."""
    from .jobs.extract import extract_many as _extract_many

    for key in _NOT_MANY:
        if key in values:
            raise UnknownOptionError(
                f"extract_many takes no {key!r}: the poolings are the keys of outs, and it runs "
                f"in this process"
            )

    return _extract_many(
        images, backbone=backbone, outs=outs, options=ExtractOptions.of(options, values)
    )


@takes(TrainOptions)
def train(
    store_path: Any, *, classifier: Any, options: TrainOptions | None = None, **values: Any
) -> dict[str, Any]:
    """Fit one classifier on a feature store (stratified split, or all rows scored on the store
    ``test``, checked to share the recipe and class names); optionally save it with ``out``.

    ``classifier`` is a name or your own scikit-learn/river estimator (cloned, then fitted);
    ``params={"C": 0.1}`` sets parameters of a named one, checked against its ``get_params()``.

    Returns accuracy, macro F1, the per-class report, fit seconds and ``model_path``.
    """
    from .jobs.train import train as _train

    return _train(store_path, classifier=classifier, options=TrainOptions.of(options, values))


@takes(SpotcheckOptions)
def spotcheck(
    inputs: Any, *, options: SpotcheckOptions | None = None, **values: Any
) -> dict[str, Any]:
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

    opts = SpotcheckOptions.of(options, values)
    if opts.scheduler:
        import functools

        from .jobs.spotcheck_dask import run_grid_dask

        opts = opts.replace(runner=functools.partial(run_grid_dask, scheduler=opts.scheduler))
    return _spotcheck(inputs, options=opts)


@takes(StreamOptions)
def stream(
    store_path: Any,
    *,
    classifier: Any = "softmax",
    options: StreamOptions | None = None,
    **values: Any,
) -> dict[str, Any]:
    """Learn an incremental classifier batch by batch from a store that need not fit in memory.

    Reports progressive (test-then-train) accuracy every ``report_every`` samples, then the
    held-out accuracy (or that on the store ``test``); ``passes`` goes over the store several
    times; ``out`` saves the model for ``predict``.
    """
    from .jobs.stream import stream as _stream

    return _stream(store_path, classifier=classifier, options=StreamOptions.of(options, values))


@takes(PredictOptions)
def predict(
    model_path: Any, images: Any, *, options: PredictOptions | None = None, **values: Any
) -> dict[str, Any]:
    """Classify images with a model saved by ``train``, ``stream`` or ``finetune`` (features
    made with the model's own recipe). A pickled (river) model needs ``trust=True``.
    ``runtime`` runs the backbone; ``precision``, when given, must be the model's own."""
    from .jobs.predict import predict as _predict

    return _predict(model_path, images, options=PredictOptions.of(options, values))


@takes(DemoOptions)
def demo(
    out: Any = "transferkit-demo", *, options: DemoOptions | None = None, **values: Any
) -> dict[str, Any]:
    """The whole flow offline on scikit-learn's digits: images, features, spot-check, train,
    predict. Returns what each step produced. ``runtime``/``precision`` run the backbone."""
    from .jobs.demo import demo as _demo

    return _demo(out, options=DemoOptions.of(options, values))


@takes(FinetuneOptions)
def finetune(
    images: Any,
    *,
    backbone: Any,
    out: Any,
    options: FinetuneOptions | None = None,
    **values: Any,
) -> dict[str, Any]:
    """Fine-tune ``backbone`` with a head on ``images`` (a folder, a CSV/JSON list or an
    ``ImageSource``) with a strategy (``warmup-unfreeze`` by default) and save the classifier as
    ``out/model.keras``. ``backbone`` is a name, a ``transferkit.Backbone`` or a Keras model.
    Returns the phases with their test accuracy and ``model_path``.
    """
    from .jobs.finetune import finetune as _finetune

    opts = FinetuneOptions.of(options, values)
    if opts.scheduler is not None:  # one replica per worker of a Dask cluster
        from .jobs.finetune_dask import finetune_on_cluster

        return finetune_on_cluster(images, backbone=backbone, out=out, options=opts)
    return _finetune(images, backbone=backbone, out=out, options=opts)


@takes(LrFindOptions)
def lr_find(
    images: Any,
    *,
    backbone: Any,
    out: Any,
    options: LrFindOptions | None = None,
    **values: Any,
) -> dict[str, Any]:
    """The learning-rate range test of a fine-tune's first phase (the data, model and strategy
    that :func:`finetune` would make from the same options): writes ``out/lr_find.png`` and
    ``out/lr_find.json`` and returns the curve with ``suggestion``, ``steepest`` and
    ``valley``. ``finetune(..., learning_rate="auto")`` runs it before training."""
    from .jobs.finetune import finetune as _finetune

    return _finetune(images, backbone=backbone, out=out, options=LrFindOptions.of(options, values))


def load_finetuned(path: Any) -> Any:
    """Reload a classifier saved by :func:`finetune`: ``.label_names``, ``.predict_proba``,
    ``.predict``, ``.predict_files``."""
    from .trainer.saved import load_finetuned as _load

    return _load(path)


@takes(ExportOptions)
def export(
    model_path: Any, *, options: ExportOptions | None = None, **values: Any
) -> dict[str, Any]:
    """Export a trained model as one deployable graph (RGB 0..255 images at the model's input
    size -> class probabilities): a fine-tuned ``.keras``, or a ``.skops`` model of ``train`` or
    ``stream`` whose head is linear (folded into a ``Dense`` layer with its scaler). ``format``
    is ``keras``, ``saved_model``, ``onnx``, ``openvino`` or ``litert``; the class names and the
    recipe travel inside the export. Returns ``path``, ``format``, ``label_names``,
    ``input_size`` and how the ``probabilities`` are made."""
    from .jobs.export import export as _export

    return _export(model_path, options=ExportOptions.of(options, values))


@takes(ServeOptions)
def serve(
    model_path: Any,
    *,
    ready: Callable[[str], None] | None = None,
    options: ServeOptions | None = None,
    **values: Any,
) -> dict[str, Any]:
    """Serve a trained model over HTTP (``GET /health``, ``GET /metadata``, ``POST /predict``)
    until SIGINT or SIGTERM, micro-batching concurrent requests; ``ready`` is called with the
    server's URL once it listens. Returns the URL and how many batches and images it served.
    To embed the application in your own ASGI server, see :func:`transferkit.serving.build_app`."""
    from .serving import serve as _serve

    return _serve(model_path, options=ServeOptions.of(options, values), ready=ready)


@takes(AuditOptions)
def audit(store_path: Any, *, options: AuditOptions | None = None, **values: Any) -> dict[str, Any]:
    """Audit a feature store (or an image folder, with ``backbone``): ``label_issues``,
    ``near_duplicates``, ``leakage`` (with ``test``), ``outliers`` and a ``summary``, each list
    ranked worst first; ``out`` writes audit.json, audit.csv and audit.html. See
    :mod:`transferkit.jobs.audit`."""
    from .jobs.audit import audit as _audit

    return _audit(store_path, options=AuditOptions.of(options, values))
