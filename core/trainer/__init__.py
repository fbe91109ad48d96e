"""The Lightning-style Trainer for fine-tuning: trainer, data modules, model, callbacks, strategies.

Importing this package does not import TensorFlow; the classes import it when used.
"""

from __future__ import annotations

from .augment import augmentation
from .callbacks import (
    Callback,
    EarlyStopping,
    HistoryLogger,
    LearningRateMonitor,
    ModelCheckpoint,
    ProgressPrinter,
)
from .data import ArrayDataModule, DataModule, ImageDataModule
from .model import TransferModel
from .precision import TRAINING_PRECISIONS, precision_scope, set_precision
from .seed import seed_everything
from .strategy import FinetuneStrategy, Phase, layer_blocks
from .trainer import Trainer, resolve_strategy

__all__ = [
    "TRAINING_PRECISIONS",
    "ArrayDataModule",
    "Callback",
    "DataModule",
    "EarlyStopping",
    "FinetuneStrategy",
    "HistoryLogger",
    "ImageDataModule",
    "LearningRateMonitor",
    "ModelCheckpoint",
    "Phase",
    "ProgressPrinter",
    "Trainer",
    "TransferModel",
    "augmentation",
    "layer_blocks",
    "precision_scope",
    "resolve_strategy",
    "seed_everything",
    "set_precision",
]
