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
click: this package stands on the second floor, just above :mod:`transferkit.recipe`.
"""

from __future__ import annotations

from .deploy import (
    EXPORT_FORMATS,
    ExportOptions,
    ServeOptions,
)
from .features import (
    DEMO_BACKBONES,
    AuditOptions,
    CacheOptions,
    DemoOptions,
    ExtractOptions,
    PredictOptions,
    SpotcheckOptions,
    StreamOptions,
    TrainOptions,
    cache_dir_option,
    jobs_option,
    model_out_option,
    overwrite_model_option,
    params_option,
    test_store_option,
)
from .fields import (
    Options,
    RecipeValues,
    UnknownOptionError,
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
from .finetune import (
    FinetuneOptions,
    LrFindOptions,
)

__all__ = [
    "AuditOptions",
    "CacheOptions",
    "DEMO_BACKBONES",
    "DemoOptions",
    "EXPORT_FORMATS",
    "ExportOptions",
    "ExtractOptions",
    "FinetuneOptions",
    "LrFindOptions",
    "Options",
    "PredictOptions",
    "RecipeValues",
    "ServeOptions",
    "SpotcheckOptions",
    "StreamOptions",
    "TrainOptions",
    "UnknownOptionError",
    "batch_size_option",
    "cache_dir_option",
    "check_jobs",
    "check_positive",
    "input_size_option",
    "jobs_option",
    "model_out_option",
    "option",
    "overwrite_model_option",
    "params_option",
    "pooling_option",
    "precision_option",
    "progress_option",
    "runtime_option",
    "seed_option",
    "store_option",
    "test_size_option",
    "test_store_option",
    "weights_option",
]
