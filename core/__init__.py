"""transferkit: transfer learning on images with Keras 3, as a pluggy plugin host.

Public names for plugins: :data:`hookimpl`, the specs (:class:`BackboneSpec`, ...),
:class:`Backbone`, :func:`pool` (the host's pooling of a feature map) and
:class:`FeatureRecipe`; :mod:`transferkit.plugin` declares the whole plugin API, these names and
the helpers a plugin shares with the host (a plugin imports nothing else). The jobs
(:func:`extract`, :func:`extract_many`, :func:`train`, :func:`spotcheck`, :func:`stream`,
:func:`finetune`, :func:`predict`) load lazily from :mod:`transferkit.api`, so importing this
package never imports TensorFlow; their options are :class:`ExtractOptions`, ... (declared once
in :mod:`transferkit.options`).
"""

from __future__ import annotations

from typing import Any

from .errors import TransferkitError, UsageError, WeightsUnavailableError
from .hookspecs import hookimpl
from .options import (
    DemoOptions,
    ExportOptions,
    ExtractOptions,
    FinetuneOptions,
    PredictOptions,
    ServeOptions,
    SpotcheckOptions,
    StreamOptions,
    TrainOptions,
)
from .pooling import pool
from .recipe import FeatureRecipe
from .specs import (
    Backbone,
    BackboneSpec,
    ClassifierSpec,
    DatasetSpec,
    HeadSpec,
    RuntimeSpec,
    StoreSpec,
    StrategySpec,
)
from .version import __version__

_API = (
    "extract",
    "extract_many",
    "train",
    "spotcheck",
    "stream",
    "finetune",
    "lr_find",
    "predict",
    "demo",
    "load_finetuned",
    "export",
    "serve",
)

__all__ = [
    "Backbone",
    "BackboneSpec",
    "ClassifierSpec",
    "DatasetSpec",
    "DemoOptions",
    "ExportOptions",
    "ExtractOptions",
    "FeatureRecipe",
    "FinetuneOptions",
    "HeadSpec",
    "PredictOptions",
    "RuntimeSpec",
    "ServeOptions",
    "SpotcheckOptions",
    "StoreSpec",
    "StrategySpec",
    "StreamOptions",
    "TrainOptions",
    "TransferkitError",
    "UsageError",
    "WeightsUnavailableError",
    "__version__",
    "hookimpl",
    "pool",
    *_API,
]


def __getattr__(name: str) -> Any:
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'transferkit' has no attribute {name!r}")
