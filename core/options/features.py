"""The options of the jobs on stored features: extract, train, stream, predict, the feature
cache, spotcheck, demo and audit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .. import trustvalues as tv
from ..errors import UsageError
from ..recipe import (
    normalise_weights,
    parse_precision,
)
from .fields import (
    Options,
    RecipeValues,
    _mode,
    _texts,
    batch_size_option,
    check_jobs,
    check_positive,
    input_size_option,
    option,
    pooling_option,
    precision_option,
    progress_option,
    runtime_option,
    seed_option,
    store_option,
    test_size_option,
    weights_option,
)

# ------------------------------------------------------------------ extract


@dataclass(frozen=True)
class ExtractOptions(RecipeValues, Options):
    """``transferkit extract`` / :func:`transferkit.extract` (the backbone, the images and the
    output store are its arguments)."""

    store: str | None = store_option()
    weights: str | None = weights_option()
    pooling: str = pooling_option()
    input_size: tuple[int, int] | None = input_size_option()
    batch_size: int = batch_size_option()
    task: str | None = option(None, "A task transform, e.g. rotation.")
    shuffle: bool = option(False, "Shuffle the images (seeded).", negatable=True)
    seed: int = seed_option("Seed of task/shuffle.")
    resume: bool = option(False, "Continue an interrupted extraction into OUT.")
    overwrite: bool = option(False, "Replace OUT if it exists.")
    strict: bool = option(False, "Fail on the first file that cannot be used.")
    max_pixels: int | None = option(
        None, "Skip images with more pixels than this (default 89478485; 0: no limit)."
    )
    compression: str | None = option("gzip", "Compression of the store.", choices=("gzip", "none"))
    buffer_rows: int | None = option(
        None, "Rows kept in memory between writes (default max(batch size, 1024))."
    )
    write_images: str | None = option(
        None,
        "Also write the images as read (e.g. rotated by --task rotation) to this folder.",
        kind="dir",
    )
    runtime: str = runtime_option()
    precision: str = precision_option()
    scheduler: str | None = option(
        None,
        "Extract on a Dask cluster into a .zarr store: a scheduler address (tcp://host:8786), "
        "or 'local' for a local Dask cluster of --jobs processes. The images and OUT must be on "
        "storage every worker sees. Default: this process.",
    )
    jobs: int | None = option(
        None, "With --scheduler local: worker processes [all cores].", short="-j"
    )
    shard_rows: int | None = option(
        None, "With --scheduler: images per shard, rounded up to whole chunks [1024]."
    )
    progress: bool = progress_option()
    threads: int | None = option(
        None,
        "Threads of the runtime (None: its default, every core; "
        ":func:`transferkit.inference.thread_split` computes a split from measured costs).",
        cli=False,
    )

    def __post_init__(self) -> None:
        self._check_recipe()
        if self.compression == "none":
            self._set("compression", None)
        self._set("seed", int(self.seed))
        self._set("shuffle", bool(self.shuffle))
        check_positive(self.batch_size, "batch size")
        _mode(self.resume, self.overwrite)
        check_jobs(self.jobs)
        if self.scheduler is None:
            if self.jobs is not None or self.shard_rows is not None:
                raise UsageError("--jobs and --shard-rows go with --scheduler (a Dask cluster)")
        elif self.buffer_rows is not None:  # a worker writes a whole shard at once
            raise UsageError("--buffer-rows is for one process; on a cluster use --shard-rows")

    @property
    def mode(self) -> str:
        """How the output is opened: ``create``, ``resume`` or ``overwrite``."""
        return _mode(self.resume, self.overwrite)


# ------------------------------------------------------------------ train and stream


def test_store_option(help_tail: str) -> Any:
    return option(
        None,
        "Score on this store (features of a separate test folder, same recipe and classes) "
        + help_tail,
        kind="path",
    )


def model_out_option(help: str) -> Any:
    return option(None, help, kind="file")


def overwrite_model_option() -> Any:
    return option(False, "Replace --out if it is a model transferkit saved.")


def params_option(example: str) -> Any:
    return option(
        (),
        "Set a parameter of the classifier (one of its get_params()), e.g. " + example + ".",
        flag="--param",
        short="-p",
        kind="many",
        metavar="KEY=VALUE",
    )


@dataclass(frozen=True)
class TrainOptions(Options):
    """``transferkit train`` / :func:`transferkit.train` (the store and the classifier are its
    arguments). ``params``: ``{"C": 0.1}`` or ``["C=0.1"]``, each checked against the
    classifier's ``get_params()``."""

    test_size: float = test_size_option()
    test: str | None = test_store_option("instead of splitting; every row of STORE then trains.")
    subset: float | None = option(None, "Use only this fraction of the store.")
    seed: int = seed_option("Seed of split and model.")
    out: str | None = model_out_option(
        "Save the fitted model here (.skops for scikit-learn, .pkl for river)."
    )
    overwrite: bool = overwrite_model_option()
    params: Any = params_option("--param C=0.1")
    store: str | None = store_option()
    calibrate: str | None = option(None, tv.CALIBRATE_HELP, choices=tv.CALIBRATIONS)
    folds: int = option(5, "Folds of the held-out probabilities of the calibration.")
    conformal: bool = option(True, tv.CONFORMAL_HELP, negatable=True)
    conformal_folds: int = option(10, tv.CONFORMAL_FOLDS_HELP)
    reference_size: int = option(1000, tv.REFERENCE_HELP)
    unfamiliar_quantile: float = option(0.99, tv.QUANTILE_HELP)

    def __post_init__(self) -> None:
        tv.check_trust(self)


@dataclass(frozen=True)
class StreamOptions(Options):
    """``transferkit stream`` / :func:`transferkit.stream` (the store and the classifier are its
    arguments)."""

    batch_size: int = batch_size_option(256, "Rows per batch.")
    report_every: int = option(1000, "Print the progressive accuracy every N samples.")
    passes: int = option(
        1,
        "Epochs over the store, each in a fresh seeded order (progressive accuracy: the first "
        "pass).",
    )
    test_size: float = test_size_option()
    test: str | None = test_store_option("instead of holding rows out.")
    seed: int = seed_option("Seed of the split, the order and the model.")
    shuffle_blocks: int = option(
        4, "Batches mixed together in the shuffle buffer (0: store order)."
    )
    out: str | None = model_out_option("Save the model.")
    overwrite: bool = overwrite_model_option()
    params: Any = params_option("-p alpha=1e-4")
    store: str | None = store_option()
    progress: bool = option(True, "Progress bar on stderr.", cli=False)
    reference_size: int = option(1000, tv.REFERENCE_HELP)
    unfamiliar_quantile: float = option(0.99, tv.QUANTILE_HELP)

    def __post_init__(self) -> None:
        tv.check_trust(self)
        for name, flag in (
            ("passes", "--passes"),
            ("batch_size", "--batch-size"),
            ("report_every", "--report-every"),
        ):
            if getattr(self, name) < 1:
                raise UsageError(f"{flag} must be at least 1, got {getattr(self, name)}")


# ------------------------------------------------------------------ predict


@dataclass(frozen=True)
class PredictOptions(Options):
    """``transferkit predict`` / :func:`transferkit.predict` (the model and the images are its
    arguments)."""

    trust: bool = option(
        False,
        "Allow loading a pickled model (river), which can run code: only for your own files.",
    )
    top: int = option(1, "Classes shown per image.")
    batch_size: int = batch_size_option()
    runtime: str = runtime_option()
    precision: str | None = precision_option(None)
    out: str | None = option(
        None,
        "With a labelled folder (one sub-folder per class): write its confusion matrix picture "
        "here (.png).",
        kind="file",
    )
    coverage: float | None = option(None, tv.COVERAGE_HELP)
    csv: str | None = option(None, tv.CSV_HELP, kind="file")

    def __post_init__(self) -> None:
        if self.precision is not None:
            self._set("precision", parse_precision(self.precision))
        tv.check_coverage(self.coverage)


# ------------------------------------------------------------------ feature cache, spotcheck, demo


def cache_dir_option() -> Any:
    return option(None, "Feature cache [$TRANSFERKIT_CACHE or ~/.cache/transferkit].", kind="dir")


def jobs_option() -> Any:
    return option(None, "Worker processes [all cores].", short="-j")


@dataclass(frozen=True)
class CacheOptions(Options):
    """How the feature cache (:mod:`transferkit.jobs.feature_cache`) extracts the images it does
    not hold yet (the recipe's backbone, input size and pooling are the recipe's own)."""

    weights: str | None = weights_option(
        "Backbone weights for extraction: default, none, or a file."
    )
    cache_dir: str | None = cache_dir_option()
    batch_size: int = batch_size_option()
    progress: bool = progress_option()
    runtime: str = runtime_option()
    precision: str = precision_option()

    def __post_init__(self) -> None:
        self._set("weights", normalise_weights(self.weights))
        self._set("precision", parse_precision(self.precision))
        check_positive(self.batch_size, "batch size")


@dataclass(frozen=True)
class SpotcheckOptions(RecipeValues, Options):
    """``transferkit spotcheck`` / :func:`transferkit.spotcheck` (the feature stores, or one image
    folder, are its argument). ``backbones`` and ``classifiers`` may hold a caller's objects too
    (a ``transferkit.Backbone`` or Keras model; an estimator)."""

    backbones: Any = option(
        None,
        "With an image folder: backbones to extract with, comma-separated (NAME[@SIZE][:POOLING], "
        "e.g. efficientnet-lite0,efficientnet-lite0@128).",
        short="-b",
    )
    classifiers: Any = option(
        "recommended",
        "Classifier names and/or groups (recommended, classic, fast, linear, incremental, river, "
        "all).",
        short="-c",
    )
    timeout: float | None = option(
        300.0, "Seconds one fit may take before it is killed (a 'timeout' row)."
    )
    jobs: int | None = jobs_option()
    scheduler: str | None = option(
        None,
        "Fan the pairs out on a Dask cluster: a scheduler address (tcp://host:8786), or 'local' "
        "for a local Dask cluster of --jobs processes. Default: local processes.",
    )
    test_size: float = test_size_option()
    test: str | None = test_store_option(
        "instead of splitting; with --backbones, a test image folder, extracted the same way."
    )
    seed: int = seed_option()
    out: str | None = option(
        None, "Folder for report.json, report.csv, heatmap.png and report.html.", kind="dir"
    )
    weights: str | None = weights_option(
        "Backbone weights for extraction: default, none, or a file."
    )
    pooling: str = pooling_option()
    input_size: tuple[int, int] | None = input_size_option()
    batch_size: int = batch_size_option()
    cache_dir: str | None = cache_dir_option()
    store: str | None = store_option()
    runtime: str = runtime_option()
    precision: str = precision_option()
    progress: bool = option(True, "Progress bars of the extraction on stderr.", cli=False)
    isolate: bool = option(
        True, "Fit each pair in a worker process (False: in this process, no time-out).", cli=False
    )
    runner: Any = option(
        None,
        "Runs the grid instead of the local worker processes, called like "
        ":func:`transferkit.jobs.spotcheck_runner.run_grid` (e.g. the Dask runner).",
        cli=False,
    )

    def __post_init__(self) -> None:
        self._set("backbones", _texts(self.backbones))
        self._check_recipe()
        check_jobs(self.jobs, zero_is_all=True)
        if self.timeout is not None and self.timeout <= 0:
            raise UsageError(f"--timeout must be positive seconds, got {self.timeout}")

    def cache(self) -> CacheOptions:
        """How the feature cache extracts the image folder (and a test image folder): these
        options' values of the fields :class:`CacheOptions` has."""
        return CacheOptions(**{name: getattr(self, name) for name in CacheOptions.names()})


DEMO_BACKBONES = "efficientnet-lite0@64,efficientnet-lite0@64:max"


@dataclass(frozen=True)
class DemoOptions(Options):
    """``transferkit demo`` / :func:`transferkit.demo` (the output folder is its argument)."""

    backbones: Any = option(
        DEMO_BACKBONES,
        "Feature settings to compare, NAME[@SIZE][:POOLING], comma-separated.",
        short="-b",
    )
    classifiers: str = option("fast", "Classifier names and/or groups.", short="-c")
    jobs: int | None = jobs_option()
    runtime: str = runtime_option()
    precision: str = precision_option()
    timeout: float = option(300.0, "Seconds one fit may take.", cli=False)
    seed: int = option(0, "Seed of the images kept apart, the splits and the models.", cli=False)
    progress: bool = option(True, "Progress bars on stderr.", cli=False)

    def __post_init__(self) -> None:
        self._set("backbones", _texts(self.backbones))
        self._set("precision", parse_precision(self.precision))
        check_jobs(self.jobs, zero_is_all=True)


# ------------------------------------------------------------------ audit


@dataclass(frozen=True)
class AuditOptions(Options):
    """``transferkit audit`` / :func:`transferkit.audit` (the training store, or image folder,
    is its argument)."""

    test: str | None = option(None, "A test store (or image folder) to check for leakage from "
                              "training.", kind="path")  # fmt: skip
    out: str | None = option(None, "Folder for audit.json, audit.csv and audit.html.", kind="dir")
    classifier: str = option("softmax", "Classifier(s) of the out-of-fold probabilities (label "
                             "issues); several, comma-separated, are averaged.")  # fmt: skip
    folds: int = option(5, "Folds of the out-of-fold probabilities.")
    k: int = option(10, "Neighbours of the outlier distance.")
    duplicate_similarity: float = option(0.97, "Cosine similarity (centred features) from which "
                                         "two rows are near-duplicates.")  # fmt: skip
    leakage_similarity: float = option(0.97, "Cosine similarity from which a test row leaks from "
                                       "a training row.")  # fmt: skip
    outlier_fence: float = option(3.0, "Outliers: k-NN distance above Q3 + this x (Q3 - Q1) of "
                                  "all rows' distances.")  # fmt: skip
    files: bool = option(True, "Read the image files: exact duplicates by content hash, and the "
                         "page's thumbnails.", negatable=True)  # fmt: skip
    root: str | None = option(None, "Folder the store's relative image paths start from [the "
                              "current one].", kind="dir")  # fmt: skip
    backbone: str | None = option(None, "With an image folder: NAME[@SIZE][:POOLING] to extract "
                                  "its features with.")  # fmt: skip
    cache_dir: str | None = cache_dir_option()
    seed: int = seed_option("Seed of the folds.")
    store: str | None = store_option()
    progress: bool = option(True, "Progress bar of an extraction on stderr.", cli=False)

    def __post_init__(self) -> None:
        tv.check_audit(self)
