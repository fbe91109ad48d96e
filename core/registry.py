"""Looks registered items up by name across all plugins, with "did you mean" errors."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import threading
from collections.abc import Callable, Collection
from typing import Any, TypeVar, cast

from . import plugin_manager as plugins
from .errors import UsageError
from .specs import (
    BackboneSpec,
    ClassifierSpec,
    DatasetSpec,
    HeadSpec,
    LoggerSpec,
    RuntimeSpec,
    Spec,
    StoreSpec,
    StrategySpec,
)

S = TypeVar("S", bound=Spec)

# kind -> (hook name, spec class)
HOOKS: dict[str, tuple[str, type[Spec]]] = {
    "backbone": ("register_backbones", BackboneSpec),
    "store": ("register_feature_stores", StoreSpec),
    "classifier": ("register_classifiers", ClassifierSpec),
    "strategy": ("register_finetune_strategies", StrategySpec),
    "dataset": ("register_datasets", DatasetSpec),
    "head": ("register_heads", HeadSpec),
    "runtime": ("register_runtimes", RuntimeSpec),
    "logger": ("register_loggers", LoggerSpec),
}

_lock = threading.RLock()
_cache: dict[str, dict[str, Spec]] = {}
_cache_generation = -1  # plugin_manager.generation() when _cache was filled


class DuplicateNameError(ValueError):
    """Two plugins registered the same name."""


def clear_cache() -> None:
    """Forget what the plugins registered (after registering a plugin object by hand, say);
    :func:`transferkit.plugin_manager.reset` makes the cache stale without calling this."""
    with _lock:
        _cache.clear()


def _collect(kind: str) -> dict[str, Spec]:
    hook_name, spec_cls = HOOKS[kind]
    items: dict[str, Spec] = {}
    # Each implementation on its own, in pluggy's order, so that one plugin's error is reported
    # and skipped without hiding what the others register.
    for impl in plugins.implementations(hook_name):
        plugin_name = impl.plugin_name

        def register(spec: Spec, _plugin: str = plugin_name) -> None:
            if not isinstance(spec, spec_cls):
                raise TypeError(
                    f"plugin {_plugin!r} registered {type(spec).__name__} with {hook_name}; "
                    f"expected {spec_cls.__name__}"
                )
            spec.validate()
            if spec.name in items:
                other = items[spec.name].plugin
                raise DuplicateNameError(
                    f"{kind} {spec.name!r} is registered by two plugins: {other!r} and "
                    f"{_plugin!r}; uninstall one of them or rename the {kind}"
                )
            object.__setattr__(spec, "plugin", _plugin)
            items[spec.name] = spec

        with plugins.isolated(plugin_name, hook_name, passthrough=(DuplicateNameError,)):
            plugins.call_impl(impl, {"register": register})
    return items


def all_specs(kind: str) -> dict[str, Spec]:
    """Every registered item of ``kind`` (backbone, store, classifier, strategy, dataset, head)."""
    if kind not in HOOKS:
        raise ValueError(f"unknown kind {kind!r}; allowed: {sorted(HOOKS)}")
    global _cache_generation
    with _lock:
        if _cache_generation != plugins.generation():
            _cache.clear()
            _cache_generation = plugins.generation()
        if kind not in _cache:
            _cache[kind] = _collect(kind)
        return dict(_cache[kind])


def parametrised(spec: Spec, name: str) -> Spec:
    """The spec ``family:argument`` made from a family spec named ``family:``.

    A spec whose name ends with ``:`` stands for a family of items told apart by an argument (e.g.
    ``tfhub:`` and a TF Hub handle). The result is a copy named ``name`` whose factory receives the
    text after the first colon as the keyword ``spec.metadata["parameter"]`` (default
    ``"argument"``), with the argument also recorded in its metadata.
    """
    family, _, argument = name.partition(":")
    if not spec.name.endswith(":") or spec.name != family + ":":
        raise ValueError(f"{spec.name!r} is not the family spec of {name!r}")
    if not argument:
        example = spec.metadata.get("example", f"{spec.name}<value>")
        raise UsageError(
            f"{spec.kind} {spec.name!r} needs a value after the colon, for example {example!r}"
        )
    keyword = str(spec.metadata.get("parameter", "argument"))
    return dataclasses.replace(
        spec,
        name=name,
        factory=functools.partial(spec.factory, **{keyword: argument}),
        metadata={**spec.metadata, keyword: argument},
    )


def get(kind: str, name: str) -> Any:
    """The spec called ``name``; an unknown name raises a ``UsageError`` with suggestions.

    ``family:argument`` resolves through a parametrised spec named ``family:`` (see
    :func:`parametrised`); the bare ``family:`` is an error saying a value is needed."""
    specs = all_specs(kind)
    family = name.partition(":")[0] + ":"
    if ":" in name and family in specs:
        return parametrised(specs[family], name)
    if name in specs:
        return specs[name]
    close = difflib.get_close_matches(name, list(specs), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise UsageError(
        f"unknown {kind} {name!r}.{hint} Run `transferkit {kind}s` to list the "
        f"{len(specs)} available."
        if kind != "strategy"
        else f"unknown strategy {name!r}.{hint} Run `transferkit strategies` to list them."
    )


def _lookup(kind: str, cls: type[S]) -> Callable[[str], S]:
    """The typed lookup of one kind: :func:`get` for ``kind``, returning a ``cls``."""

    def lookup(name: str) -> S:
        return cast(S, get(kind, name))

    lookup.__name__ = lookup.__qualname__ = kind
    lookup.__doc__ = f"The {kind} registered as ``name`` (see :func:`get`)."
    return lookup


backbone = _lookup("backbone", BackboneSpec)
classifier = _lookup("classifier", ClassifierSpec)
strategy = _lookup("strategy", StrategySpec)
dataset = _lookup("dataset", DatasetSpec)
head = _lookup("head", HeadSpec)
runtime = _lookup("runtime", RuntimeSpec)
store = _lookup("store", StoreSpec)
logger = _lookup("logger", LoggerSpec)


def store_for_path(path: str, store_name: str | None = None) -> StoreSpec:
    """The store format for ``path``: ``store_name`` if given, else the one owning its suffix."""
    if store_name:
        return store(store_name)
    lowered = str(path).rstrip("/").lower()
    specs = all_specs("store")
    for spec in specs.values():
        assert isinstance(spec, StoreSpec)
        if any(lowered.endswith(suffix) for suffix in spec.suffixes):
            return spec
    known = sorted(s for spec in specs.values() for s in spec.suffixes)  # type: ignore[attr-defined]
    raise UsageError(
        f"cannot tell the store format of {path!r} from its suffix; use one of {known} "
        f"or pass --store NAME"
    )


def keras_objects(wanted: Collection[str] = ()) -> dict[str, Any]:
    """The Keras classes plugins register with ``register_keras_objects``, by registered name
    (``package>Name``): every class registered as one, and those registered through a function
    when their name is in ``wanted`` (the names a file being loaded holds). Imports Keras.

    A plugin that fails in the hook (or whose function fails) is reported (a warning) and skipped.
    """
    import keras

    classes: dict[str, Any] = {}
    makers: dict[str, tuple[str, Any]] = {}
    for impl in plugins.implementations("register_keras_objects"):
        plugin_name = impl.plugin_name

        def register(obj: Any, name: str | None = None, _plugin: str = plugin_name) -> None:
            if isinstance(obj, type):
                classes.setdefault(name or keras.saving.get_registered_name(obj), obj)
            elif callable(obj) and name:
                makers.setdefault(name, (_plugin, obj))
            else:
                raise TypeError(
                    f"plugin {_plugin!r}: register_keras_objects takes a class, or a function "
                    f"with name='package>Name', not {type(obj).__name__}"
                )

        with plugins.isolated(plugin_name, "register_keras_objects"):
            plugins.call_impl(impl, {"register": register})
    for name in wanted:
        if name in classes or name not in makers:
            continue
        plugin_name, make = makers[name]
        with plugins.isolated(plugin_name, f"register_keras_objects ({name})"):
            classes[name] = make()
    return classes
