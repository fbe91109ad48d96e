"""The machinery of every job's options (:func:`option`, :class:`Options`, the unknown-key
refusal) and the fields and checks several jobs share."""

from __future__ import annotations

import dataclasses
import difflib
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..errors import UsageError
from ..recipe import (
    DEFAULT_WEIGHTS,
    FeatureRecipe,
    normalise_weights,
    parse_pooling,
    parse_precision,
)
from ..sizes import parse_input_size
from ..specs import FEATURE_PRECISIONS, POOLINGS

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


def _texts(value: Any) -> Any:
    """``"a,b"`` -> ``("a", "b")``; a list -> a tuple; one object -> a tuple of it."""
    if value is None:
        return None
    if isinstance(value, str):
        return tuple(b.strip() for b in value.split(",") if b.strip())
    if isinstance(value, list | tuple):
        return tuple(value)
    return (value,)  # one Backbone or Keras model
