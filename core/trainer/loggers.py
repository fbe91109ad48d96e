"""Loggers of fine-tune runs: Trainer callbacks that record a run somewhere (files, TensorBoard,
an MLflow tracking server), registered by plugins (``register_loggers``, :class:`LoggerSpec`)
and chosen by name (``finetune --logger csv --logger mlflow``).

A :class:`Logger` hears the epochs as every callback does and, before the fit, receives the run's
effective configuration (what ``--print-config`` prints for the same call) and its feature
recipe, which the fine-tune job also saves beside the run (``config.yaml``, ``recipe.json``):
loggers that keep parameters or artifacts log them there too (Lightning's
``SaveConfigCallback``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .callbacks import Callback

CONFIG_FILE = "config.yaml"
RECIPE_FILE = "recipe.json"
DEFAULT_LOGGERS = ("csv",)


class Logger(Callback):
    """Base class of loggers; override the :class:`Callback` methods you need, and
    :meth:`log_config` to record the run's configuration."""

    def log_config(
        self, config: Mapping[str, Any], recipe: Mapping[str, Any], files: Sequence[Path]
    ) -> None:
        """Called once before the fit: ``config`` is the run's effective configuration (the
        keys of ``--config``), ``recipe`` its feature recipe, ``files`` where both are saved."""


def make_loggers(
    names: Sequence[str], out: Path, location: str | None = None, tensorboard: str | None = None
) -> list[Any]:
    """The loggers called ``names`` (default ``csv``) for the run folder ``out``, each told
    ``location`` (``--logger-dir``); ``tensorboard`` (the ``--tensorboard DIR`` flag) adds the
    ``tensorboard`` logger writing there."""
    from .. import registry

    chosen = list(dict.fromkeys(names or DEFAULT_LOGGERS))
    specs = [(registry.logger(name), location) for name in chosen]  # unknown names fail first
    if tensorboard is not None:
        specs = [s for s in specs if s[0].name != "tensorboard"]
        specs.append((registry.logger("tensorboard"), str(tensorboard)))
    return [spec.factory(out, where) for spec, where in specs]


def run_config(images: Any, backbone: Any, out: Path, options: Any) -> dict[str, Any]:
    """The effective configuration of a fine-tune, under the keys ``--config`` takes (those of
    ``--print-config``): its arguments, then each command-line option."""
    config: dict[str, Any] = {
        "images": _plain(images),
        "backbone": _plain(backbone),
        "out": str(out),
    }
    for f in dataclasses.fields(options):
        if f.metadata.get("cli", True):
            value = getattr(options, f.name)
            if value is None:  # parsed to None: the default (``devices: auto``), or none given
                value = [] if f.metadata.get("kind") == "many" else f.default
            config[f.name.replace("_", "-")] = _plain(value)
    return config


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return getattr(value, "name", None) or type(value).__name__


def save_run_config(
    out: Path, config: Mapping[str, Any], recipe: Mapping[str, Any], loggers: Sequence[Any]
) -> list[Path]:
    """Write ``config.yaml`` and ``recipe.json`` in ``out`` and hand both to each
    :class:`Logger` among ``loggers``."""
    import yaml

    from ..outputs import atomic_write_text

    files = [out / CONFIG_FILE, out / RECIPE_FILE]
    atomic_write_text(files[0], yaml.safe_dump(dict(config), sort_keys=False))
    atomic_write_text(files[1], json.dumps(dict(recipe), indent=2, default=str))
    for logger in loggers:
        if isinstance(logger, Logger):
            logger.log_config(config, recipe, files)
    return files
