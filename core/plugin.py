"""The declared plugin API: every name a plugin may import from the host, in one module.

A plugin (the built-ins in ``transferkit.plugins`` included) imports from ``transferkit``,
``transferkit.plugin`` and its own package, nothing else; ``tests/test_layers.py`` holds the
built-ins and ``plugin_template/`` to that. Whatever is not listed in :data:`__all__` may change
without notice.

Every name loads on first use (PEP 562 ``__getattr__``), so ``import transferkit.plugin`` imports
neither TensorFlow nor Keras; only the Keras layers (:class:`PoolIfMap`, :class:`GradientScale`,
:class:`ImagePreprocessing`) import Keras when they are touched, so take them inside the function
that builds a model.

``transferkit.__all__`` stays the API of a program that uses transferkit (the jobs and the records
it passes to them) plus the few names every plugin needs (:data:`hookimpl`, the specs, the
errors); the helpers a plugin shares with the host (the store base class, the image sources, the
strategy base class, the layers, the lookups) are listed here only, so that the package's
namespace does not grow with what only plugin authors use. The names of ``transferkit.__all__``
that a plugin needs are here too: a plugin may take all it needs from this one module.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .errors import TransferkitError, UsageError, WeightsUnavailableError
    from .hookspecs import hookimpl
    from .images import (
        IMAGE_SUFFIXES,
        ImageRecord,
        ImageSource,
        TransformedSource,
        write_images,
    )
    from .inference import cache_root, native_bf16
    from .plugin_manager import get_plugin_manager
    from .plugin_manager import reset as reset_plugins
    from .pooling import pool
    from .recipe import DEFAULT_WEIGHTS, FeatureRecipe, normalise_weights
    from .registry import get as get_spec
    from .sizes import parse_input_size
    from .specs import (
        Backbone,
        BackboneSpec,
        ClassifierSpec,
        DatasetSpec,
        HeadSpec,
        LoggerSpec,
        Resize,
        RuntimeSpec,
        StoreSpec,
        StrategySpec,
        TokenLayout,
    )
    from .store import FeatureStore
    from .trainer.callbacks import HistoryLogger
    from .trainer.layers import GradientScale, ImagePreprocessing, PoolIfMap
    from .trainer.loggers import Logger
    from .trainer.strategy import FinetuneStrategy, Phase, trainable_blocks

# name -> (module relative to transferkit, attribute in it)
_NAMES: dict[str, tuple[str, str]] = {
    # the hook marker and the records a plugin registers
    "hookimpl": ("hookspecs", "hookimpl"),
    "Backbone": ("specs", "Backbone"),
    "BackboneSpec": ("specs", "BackboneSpec"),
    "ClassifierSpec": ("specs", "ClassifierSpec"),
    "DatasetSpec": ("specs", "DatasetSpec"),
    "HeadSpec": ("specs", "HeadSpec"),
    "LoggerSpec": ("specs", "LoggerSpec"),
    "Resize": ("specs", "Resize"),
    "RuntimeSpec": ("specs", "RuntimeSpec"),
    "StoreSpec": ("specs", "StoreSpec"),
    "StrategySpec": ("specs", "StrategySpec"),
    "TokenLayout": ("specs", "TokenLayout"),
    # the errors the command line maps to exit codes
    "TransferkitError": ("errors", "TransferkitError"),
    "UsageError": ("errors", "UsageError"),
    "WeightsUnavailableError": ("errors", "WeightsUnavailableError"),
    # backbones: weights, input size, pooling, the recipe of a feature vector
    "DEFAULT_WEIGHTS": ("recipe", "DEFAULT_WEIGHTS"),
    "normalise_weights": ("recipe", "normalise_weights"),
    "FeatureRecipe": ("recipe", "FeatureRecipe"),
    "parse_input_size": ("sizes", "parse_input_size"),
    "pool": ("pooling", "pool"),
    # feature stores
    "FeatureStore": ("store", "FeatureStore"),
    # image sources (datasets)
    "IMAGE_SUFFIXES": ("images", "IMAGE_SUFFIXES"),
    "ImageRecord": ("images", "ImageRecord"),
    "ImageSource": ("images", "ImageSource"),
    "TransformedSource": ("images", "TransformedSource"),
    "write_images": ("images", "write_images"),
    # fine-tune strategies
    "FinetuneStrategy": ("trainer.strategy", "FinetuneStrategy"),
    "Phase": ("trainer.strategy", "Phase"),
    "trainable_blocks": ("trainer.strategy", "trainable_blocks"),
    # loggers of fine-tune runs
    "Logger": ("trainer.loggers", "Logger"),
    "HistoryLogger": ("trainer.callbacks", "HistoryLogger"),
    # Keras layers for heads and backbones (importing one imports Keras)
    "PoolIfMap": ("trainer.layers", "PoolIfMap"),
    "GradientScale": ("trainer.layers", "GradientScale"),
    "ImagePreprocessing": ("trainer.layers", "ImagePreprocessing"),
    # inference runtimes and caches
    "native_bf16": ("inference", "native_bf16"),
    "cache_root": ("inference", "cache_root"),
    # what other plugins registered, and the plugin manager (for a plugin's own tests)
    "get_spec": ("registry", "get"),
    "get_plugin_manager": ("plugin_manager", "get_plugin_manager"),
    "reset_plugins": ("plugin_manager", "reset"),
}

__all__ = [
    "DEFAULT_WEIGHTS",
    "IMAGE_SUFFIXES",
    "Backbone",
    "BackboneSpec",
    "ClassifierSpec",
    "DatasetSpec",
    "FeatureRecipe",
    "FeatureStore",
    "FinetuneStrategy",
    "GradientScale",
    "HeadSpec",
    "HistoryLogger",
    "ImagePreprocessing",
    "ImageRecord",
    "ImageSource",
    "Logger",
    "LoggerSpec",
    "Phase",
    "PoolIfMap",
    "Resize",
    "RuntimeSpec",
    "StoreSpec",
    "StrategySpec",
    "TokenLayout",
    "TransferkitError",
    "TransformedSource",
    "UsageError",
    "WeightsUnavailableError",
    "cache_root",
    "get_plugin_manager",
    "get_spec",
    "hookimpl",
    "native_bf16",
    "normalise_weights",
    "parse_input_size",
    "pool",
    "reset_plugins",
    "trainable_blocks",
    "write_images",
]


def __getattr__(name: str) -> Any:
    try:
        module_name, attribute = _NAMES[name]
    except KeyError:
        raise AttributeError(f"module 'transferkit.plugin' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f"{__package__}.{module_name}"), attribute)
    globals()[name] = value  # the next look-up finds it without calling here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
