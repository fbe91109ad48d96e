"""The options of ``finetune`` and ``lr-find``."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .. import fitvalues
from .. import trustvalues as tv
from ..errors import UsageError
from ..recipe import (
    normalise_weights,
    parse_pooling,
)
from ..sizes import parse_input_size
from ..specs import TRAINING_PRECISIONS
from .fields import (
    Options,
    _texts,
    batch_size_option,
    input_size_option,
    option,
    seed_option,
    weights_option,
)

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
    frozen_cache: bool = option(True, "Train on the frozen part's cached output where that is "
                                "exact (augment none or flip).", negatable=True)  # fmt: skip
    frozen_cache_memory: int = option(2048, "MiB the frozen-part cache keeps in memory; beyond, "
                                      "a file in OUT (deleted after).")  # fmt: skip

    def __post_init__(self) -> None:
        if self.frozen_cache_memory < 0:
            memory = self.frozen_cache_memory
            raise UsageError(f"--frozen-cache-memory must be 0 MiB or more, got {memory}")
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
