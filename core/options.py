"""Every job's options, each declared once: its type, default, help and check.

A job's options are one frozen dataclass (:class:`ExtractOptions`, :class:`TrainOptions`, ...).
Everything else derives from its fields:

* the command line's flags (:func:`transferkit.commands.options.from_fields`), and through them
  the keys of ``--config`` files and what ``--print-config`` prints;
* the keyword arguments of :mod:`transferkit.api`'s functions, their signature and their
  documentation (:func:`transferkit.api` builds them from the fields);
* what the job reads: the checked, normalised value.

Values are checked once, in ``__post_init__``, with the one parser of each kind (sizes,
pooling, precision, weights): below the edge nobody parses again. No TensorFlow, no NumPy, no
click: this module stands on the second floor, just above :mod:`transferkit.recipe`.
"""

from __future__ import annotations

import dataclasses
import difflib
import numbers
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from . import fitvalues
from . import trustvalues as tv
from .errors import UsageError
from .recipe import (
    DEFAULT_WEIGHTS,
    FeatureRecipe,
    normalise_weights,
    parse_pooling,
    parse_precision,
)
from .sizes import parse_input_size
from .specs import FEATURE_PRECISIONS, POOLINGS, TRAINING_PRECISIONS

T = TypeVar("T", bound="Options")


class UnknownOptionError(UsageError, TypeError):
    """A keyword that is no option of the job: a usage error on the command line, and the
    ``TypeError`` Python raises for an unexpected keyword argument."""


def option(
    default: Any,
    help: str,
    *,
    flag: str | None = None,
    short: str | None = None,
    choices: Sequence[str] | None = None,
    kind: str | None = None,
    metavar: str | None = None,
    negatable: bool = False,
    cli: bool = True,
    show_default: bool | None = None,
    aliases: Sequence[str] = (),
    nargs: int = 1,
) -> Any:
    """One option: its ``default`` and ``help``; for the command line, its ``flag`` (default
    ``--field-name``), a ``short`` flag, ``choices``, a ``kind`` of value (``size``, ``path``,
    ``file``, ``dir``, ``many``: the flag given several times), ``negatable`` (``--x/--no-x``),
    more flags (``aliases``), ``nargs`` values after one flag, or ``cli=False`` for an option of
    the Python API only (an object, a callback)."""
    return field(
        default=default,
        metadata={
            "help": help,
            "flag": flag,
            "short": short,
            "choices": tuple(choices) if choices else None,
            "kind": kind,
            "metavar": metavar,
            "negatable": negatable,
            "cli": cli,
            "show_default": show_default,
            "aliases": tuple(aliases),
            "nargs": nargs,
        },
    )


@dataclass(frozen=True)
class Options:
    """The base of every job's options: construction from keyword values, with "did you mean"."""

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def types(cls) -> dict[str, Any]:
        """Each field's type (resolved from its annotation)."""
        return typing.get_type_hints(cls)

    @classmethod
    def of(cls: type[T], options: T | None = None, values: Mapping[str, Any] | None = None) -> T:
        """``options`` (or the defaults) with ``values`` set; an unknown key is a
        :class:`UsageError` naming the closest option and every allowed one."""
        values = dict(values or {})
        known = cls.names()
        for key in values:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise UnknownOptionError(
                    f"unknown option {key!r}{hint}; allowed: {', '.join(known)}"
                )
        if options is None:
            return cls(**values)
        if not isinstance(options, cls):
            raise UsageError(f"options must be a {cls.__name__}, got {type(options).__name__}")
        return dataclasses.replace(options, **values) if values else options

    def replace(self: T, **changes: Any) -> T:
        return dataclasses.replace(self, **changes)

    def values(self) -> dict[str, Any]:
        """The options as keyword values (what :meth:`of` takes back)."""
        return {name: getattr(self, name) for name in self.names()}

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)


# ------------------------------------------------------------------ checks used by several jobs


def check_positive(value: Any, what: str) -> None:
    if value is not None and value <= 0:
        raise UsageError(f"{what} must be positive, got {value}")


def check_jobs(jobs: int | None, *, zero_is_all: bool = False) -> None:
    """``--jobs``: at least 1 (``zero_is_all``: 0 is every core, as ``None`` is)."""
    if jobs is not None and jobs < (0 if zero_is_all else 1):
        raise UsageError(f"--jobs must be at least 1, got {jobs}")


def _mode(resume: bool, overwrite: bool) -> str:
    if resume and overwrite:
        raise UsageError("--resume and --overwrite exclude each other; pick one")
    return "resume" if resume else "overwrite" if overwrite else "create"


# ------------------------------------------------------------------ fields shared by several jobs


def store_option() -> Any:
    return option(None, "Store format, when the suffix does not tell.")


def seed_option(help: str = "Seed of the split and the model.") -> Any:
    return option(0, help)


def test_size_option() -> Any:
    return option(0.2, "Held-out fraction.")


def runtime_option() -> Any:
    return option(
        "auto",
        "Inference runtime (see `transferkit runtimes`): keras, openvino, litert, or auto (the "
        "fastest available that is exact at 32-bit).",
    )


def precision_option(default: str | None = "32") -> Any:
    return option(
        default,
        "Arithmetic of the network: 32-bit, or bf16 where the CPU has it natively (different "
        "features; see docs/runtimes.md)." + ("" if default else " Default: the model's own."),
        choices=FEATURE_PRECISIONS,
    )


def weights_option(help: str = "default (the backbone's pretrained weights), none (random), or a "
                   "weights file.") -> Any:  # fmt: skip
    return option(DEFAULT_WEIGHTS, help)


def pooling_option() -> Any:
    return option(
        "avg",
        "How the feature map (or a transformer's tokens: cls, mean, cls+mean) becomes one vector.",
        choices=POOLINGS,
    )


def input_size_option() -> Any:
    return option(None, "N or HxW, e.g. 224 or 224x160 (default: the backbone's own).", kind="size")


def batch_size_option(default: int = 32, help: str = "Images per batch.") -> Any:
    return option(default, help)


def progress_option() -> Any:
    return option(True, "Progress bar on stderr.", negatable=True)


class RecipeValues:
    """For options holding ``weights``, ``pooling``, ``input_size`` and ``precision``: checks
    them once and makes the :class:`~transferkit.recipe.FeatureRecipe` of a backbone."""

    weights: str | None
    pooling: str
    input_size: tuple[int, int] | None
    precision: str

    def _check_recipe(self) -> None:
        set_ = object.__setattr__
        set_(self, "weights", normalise_weights(self.weights))
        set_(self, "pooling", parse_pooling(self.pooling))
        set_(self, "input_size", parse_input_size(self.input_size))
        set_(self, "precision", parse_precision(self.precision))

    def recipe(self, backbone: str, *, fingerprint: str = "") -> FeatureRecipe:
        """The recipe of ``backbone`` (a registered name, or an object's spec name) made with
        these options."""
        return FeatureRecipe(
            backbone=backbone,
            weights=self.weights,
            input_size=self.input_size,
            pooling=self.pooling,
            precision=self.precision,
            fingerprint=fingerprint,
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
    folds: int = option(5, "Folds of the held-out probabilities (calibration, conformal scores).")
    conformal: bool = option(True, tv.CONFORMAL_HELP, negatable=True)
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


# ------------------------------------------------------------------ finetune


def _per_phase(value: Any, kind: type, what: str) -> Any:
    """One value, or one per phase (a sequence); an empty sequence is None. ``kind`` is ``int``
    (a whole number, NumPy's included) or ``float``."""

    def one(v: Any) -> Any:
        if isinstance(v, str):
            try:
                v = float(v)
            except ValueError:
                raise UsageError(f"{what} must be numbers, got {v!r}") from None
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise UsageError(f"{what} must be numbers, got {v!r}")
        if kind is int and not float(v).is_integer():
            raise UsageError(f"{what} must be whole numbers, got {v!r}")
        return kind(v)

    if value is None:
        return None
    if isinstance(value, str | numbers.Real):
        return one(value)
    values = tuple(one(v) for v in value)
    return values or None


@dataclass(frozen=True)
class FinetuneOptions(Options):
    """``transferkit finetune`` / :func:`transferkit.finetune` (the images, the backbone and the
    output folder are its arguments). What a head or a strategy brings by default (augmentation,
    early stopping, label smoothing, the probe start) is in their specs' metadata: ``None`` here
    means "that default"."""

    strategy: str = option(
        "warmup-unfreeze",
        "Fine-tune strategy: warmup-unfreeze, head-only, full, gradual, or a plugin's.",
        short="-s",
    )
    head: str | None = option(
        None,
        "Head: linear (default: pooling, dropout, dense), classic (with warmup-unfreeze also the "
        "classic recipe's RMSprop/SGD schedule), dense or a plugin's.",
    )
    epochs: int | tuple[int, ...] | None = option(
        None,
        "Epochs, once or once per phase (warmup-unfreeze: --epochs 10 --epochs 10).",
        kind="many",
    )
    learning_rate: float | Literal["auto"] | tuple[float | Literal["auto"], ...] | None = option(
        None,
        "Learning rate, once or once per phase; auto: the first phase's from an lr-find sweep.",
        kind="many",
        aliases=("--lr",),
    )
    unfreeze_from: int | None = option(
        None, "First base layer trained in the unfrozen phase (default per backbone; VGG16: 15)."
    )
    augment: str | None = option(
        None,
        "Augmentation of training batches (classic: the classic generator's settings; light: "
        "flips and random crops; flip: flips); default flip with warmup-unfreeze and its linear "
        "head, else classic, none with --task rotation.",
        choices=("classic", "light", "flip", "none"),
    )
    label_smoothing: float | None = option(
        None, "Label smoothing of the loss (default warmup-unfreeze: 0.1; --head classic: 0)."
    )
    batch_size: int = batch_size_option()
    input_size: tuple[int, int] | None = input_size_option()
    weights: str | None = weights_option("default (pretrained), none (random), or a weights file.")
    task: str | None = option(None, "A task transform, e.g. rotation.")
    split: tuple[float, float, float] = option(
        (0.7, 0.15, 0.15), "Train, validation and test fractions.", nargs=3
    )
    test: Any = option(
        None,
        "Separate test images (same class sub-folders); IMAGES is then split into train and "
        "validation only (the test fraction goes to training).",
        kind="path",
    )
    seed: int = seed_option("Seed of the split, the initialisation and the batches.")
    patience: int | None = option(
        None,
        "Early stopping patience in epochs (default warmup-unfreeze: 3, the best epoch's weights "
        "restored; --head classic: none).",
    )
    max_epochs: int | None = option(None, "Cap on the epochs of all phases.")
    train_bn: bool = option(False, "Train BatchNorm layers of the base too.")
    precision: str = option(
        "32",
        "Training precision (Keras' dtype policy; not the features' --precision of extract).",
        choices=tuple(TRAINING_PRECISIONS),
    )
    deterministic: bool = option(False, "TensorFlow op determinism on.")
    tensorboard: str | None = option(
        None, "Write TensorBoard logs to this folder (`tensorboard --logdir DIR`).", kind="dir"
    )
    resume: bool = option(False, "Continue from OUT's last checkpoint.")
    overwrite: bool = option(False, "Start afresh even if OUT has a checkpoint.")
    progress: bool = option(True, "Per-epoch lines on stderr.", negatable=True)
    pooling: str | None = option(
        None, "The pooling of the base (default: the head's own, else avg).", cli=False
    )
    restore_best: bool | None = option(
        None, "Restore the best epoch's weights before the test and the export.", cli=False
    )
    probe_init: bool | None = option(
        None,
        "Start the linear head from a logistic regression on the frozen base's features.",
        cli=False,
    )
    callbacks: Sequence[Any] = option(
        (), "Trainer callbacks or Keras callbacks, added to transferkit's own.", cli=False
    )
    devices: Any = option("auto", "Devices: auto, or N (N GPUs; without GPUs, N logical CPU "
                          "devices, to try the distributed path: not faster).")  # fmt: skip
    distribute: str = option("auto", "auto (mirrored when --devices > 1), mirrored (this machine's "
                             "devices), multi-worker (machines: TF_CONFIG, or the workers of "
                             "--scheduler).", choices=fitvalues.DISTRIBUTIONS)  # fmt: skip
    scheduler: str | None = option(None, "With --distribute multi-worker: a Dask scheduler (or "
                                   "local); each worker runs one replica.")  # fmt: skip
    fast_dev_run: bool = option(False, "Debug run: one training and one validation batch per "
                                "phase; no checkpoint, no model.")  # fmt: skip
    limit_train_batches: Any = option(None, "Training batches per epoch: a count (10) or a "
                                      "fraction (0.25).", metavar="N|F")  # fmt: skip
    limit_val_batches: Any = option(None, "Validation (and test) batches: a count (10) or a "
                                    "fraction (0.25); 0: none.", metavar="N|F")  # fmt: skip
    overfit_batches: int = option(0, "Train on N fixed batches, and validate on them too.")
    accumulate_grad_batches: int = option(1, "Average the gradients of K batches before each step "
                                          "(an effective batch of K x batch).")  # fmt: skip
    gradient_clip_val: float | None = option(None, "Clip the gradients' global norm to this value.")
    logger: tuple[str, ...] = option((), "Loggers (see `transferkit loggers`), one or several: csv "
                                     "(default), tensorboard, mlflow.", kind="many")  # fmt: skip
    logger_dir: str | None = option(None, "Where loggers write: a folder (default OUT), or a "
                                    "tracking URI for mlflow.")  # fmt: skip
    conformal: bool = option(True, tv.FINETUNE_CONFORMAL_HELP, negatable=True)
    reference_size: int = option(1000, tv.REFERENCE_HELP)
    unfamiliar_quantile: float = option(0.99, tv.QUANTILE_HELP)
    calibrate: bool = option(False, "Fit the head's temperature on the validation split.")

    def __post_init__(self) -> None:
        self._set("epochs", _per_phase(self.epochs, int, "epochs"))
        self._set("learning_rate", fitvalues.learning_rates(self.learning_rate, _per_phase))
        self._set("devices", fitvalues.parse_devices(self.devices))
        for split in ("train", "val"):
            name = f"limit_{split}_batches"
            self._set(name, fitvalues.parse_batch_limit(getattr(self, name), split))
        self._set("logger", _texts(self.logger) or ())
        fitvalues.check_run_values(self.overfit_batches, self.accumulate_grad_batches,
                         self.gradient_clip_val, self.scheduler, self.distribute)  # fmt: skip
        self._set("weights", normalise_weights(self.weights))
        self._set("input_size", parse_input_size(self.input_size))
        self._set("split", tuple(float(v) for v in self.split))
        self._set("callbacks", tuple(self.callbacks))
        tv.check_calibrate_split(self.calibrate, self.split)
        tv.check_trust(self)
        if self.pooling is not None:
            self._set("pooling", parse_pooling(self.pooling))


@dataclass(frozen=True)
class LrFindOptions(FinetuneOptions):
    """``transferkit lr-find`` / :func:`transferkit.lr_find`: a fine-tune's options and the
    sweep's (``finetune --learning-rate auto`` sweeps with these defaults)."""

    min_lr: float = option(1e-8, "The sweep's first learning rate.")
    max_lr: float = option(1.0, "The sweep's last learning rate.")
    num_training: int = option(100, "Training batches in the sweep (one rate each).")
    early_stop_threshold: float | None = option(4.0, "Stop once the smoothed loss exceeds this "
                                                "many times the best (divergence).")  # fmt: skip

    def __post_init__(self) -> None:
        super().__post_init__()
        fitvalues.check_sweep(self.min_lr, self.max_lr, self.num_training)


# ------------------------------------------------------------------ feature cache, spotcheck, demo


def cache_dir_option() -> Any:
    return option(None, "Feature cache [$TRANSFERKIT_CACHE or ~/.cache/transferkit].", kind="dir")


def jobs_option() -> Any:
    return option(None, "Worker processes [all cores].", short="-j")


def _texts(value: Any) -> Any:
    """``"a,b"`` -> ``("a", "b")``; a list -> a tuple; one object -> a tuple of it."""
    if value is None:
        return None
    if isinstance(value, str):
        return tuple(b.strip() for b in value.split(",") if b.strip())
    if isinstance(value, list | tuple):
        return tuple(value)
    return (value,)  # one Backbone or Keras model


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


# ------------------------------------------------------------------ export and serve

EXPORT_FORMATS = ("keras", "saved_model", "onnx", "openvino", "litert")


@dataclass(frozen=True)
class ExportOptions(Options):
    """``transferkit export`` / :func:`transferkit.export` (the model is its argument)."""

    format: str = option(
        "keras",
        "What to write: keras (.keras file), saved_model (folder), onnx (.onnx file), openvino "
        "(folder with model.xml), litert (folder with model.tflite).",
        choices=EXPORT_FORMATS,
    )
    out: str | None = option(None, "Where to write the export.", short="-o", kind="path")
    overwrite: bool = option(False, "Replace an export already at --out.")
    trust: bool = option(
        False, "Load a .skops model holding types other than scikit-learn's and NumPy's."
    )

    def __post_init__(self) -> None:
        fmt = str(self.format).strip().lower().replace("-", "_")
        if fmt == "tf_saved_model":
            fmt = "saved_model"
        if fmt not in EXPORT_FORMATS:
            raise UsageError(f"unknown export format {self.format!r}; allowed: {EXPORT_FORMATS}")
        self._set("format", fmt)


@dataclass(frozen=True)
class ServeOptions(Options):
    """``transferkit serve`` / :func:`transferkit.serve` (the model is its argument)."""

    host: str = option("127.0.0.1", "Address to bind (0.0.0.0: every interface).")
    port: int = option(8000, "Port to bind (0: a free one, printed at start).")
    runtime: str = runtime_option()
    max_batch: int = option(32, "Images per forward pass at most (micro-batching).")
    max_wait_ms: float = option(
        5.0,
        "A batch closes when no image joined it for this long (at most 10x this after its "
        "first image), or when it is full.",
    )
    top: int = option(5, "Classes in each answer's top list.")
    max_body: int = option(20_000_000, "Largest request body in bytes (larger: 413).")
    max_pixels: int = option(40_000_000, "Largest image in pixels, width x height (larger: 413).")
    max_images: int = option(64, "Images in one multipart request at most.")
    read_timeout: float = option(
        10.0, "Seconds a client may take to send its request body (slower: 408)."
    )
    trust: bool = option(
        False,
        "Allow loading a pickled model (river), which can run code: only for your own files.",
    )
    coverage: float | None = option(None, tv.COVERAGE_HELP)

    def __post_init__(self) -> None:
        tv.check_coverage(self.coverage)
        for name in ("max_batch", "max_body", "max_pixels", "max_images", "top"):
            check_positive(getattr(self, name), f"--{name.replace('_', '-')}")
        check_positive(self.read_timeout, "--read-timeout")
        if self.max_wait_ms < 0:
            raise UsageError(f"--max-wait-ms must be 0 or more, got {self.max_wait_ms}")
        if not 0 <= self.port <= 65535:
            raise UsageError(f"--port must be 0..65535, got {self.port}")


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
