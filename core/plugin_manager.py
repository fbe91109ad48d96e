"""The plugin manager: built-in plugins, entry-point plugins, and their isolated loading.

Built-in plugins are module paths in :data:`DEFAULT_PLUGINS`, registered exactly like third-party
plugins, which come from the ``transferkit`` entry-point group. Loading is lazy (the first call to
:func:`get_plugin_manager`) and idempotent. A plugin that fails to import, or implements a hook that
does not exist, is reported on stderr and recorded in :func:`failed_plugins`; it never stops the
command line.

Environment:

* ``TRANSFERKIT_STRICT_PLUGINS=1`` re-raises a plugin's error instead of reporting it.
* ``TRANSFERKIT_LOAD_PLUGINS=a,b`` loads only those entry-point plugins (empty: none).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import sys
import threading
from dataclasses import dataclass
from typing import Any

import pluggy

from . import hookspecs

DEFAULT_PLUGINS: tuple[str, ...] = (
    "transferkit.plugins.heads",
    "transferkit.plugins.sklearn_classifiers",
    "transferkit.plugins.river_classifiers",
    "transferkit.plugins.stores",
    "transferkit.plugins.datasets",
    "transferkit.plugins.keras_applications",
    "transferkit.plugins.efficientnet_lite",
    "transferkit.plugins.tfhub",
    "transferkit.plugins.strategies",
    "transferkit.plugins.runtimes",
)

ENTRY_POINT_GROUP = "transferkit"
STRICT_ENV = "TRANSFERKIT_STRICT_PLUGINS"
LOAD_ENV = "TRANSFERKIT_LOAD_PLUGINS"


@dataclass(frozen=True)
class FailedPlugin:
    name: str
    error: str
    builtin: bool


_lock = threading.RLock()
_pm: pluggy.PluginManager | None = None
_failed: list[FailedPlugin] = []
_builtin_names: set[str] = set()
_versions: dict[str, str] = {}


def strict_mode() -> bool:
    """Whether ``TRANSFERKIT_STRICT_PLUGINS`` asks for plugin errors to be re-raised."""
    return os.environ.get(STRICT_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _report(name: str, exc: BaseException, builtin: bool) -> None:
    message = f"{type(exc).__name__}: {exc}"
    _failed.append(FailedPlugin(name, message, builtin))
    print(f'transferkit: error loading plugin "{name}": {message}', file=sys.stderr)


def _register_checked(pm: pluggy.PluginManager, plugin: Any, name: str, builtin: bool) -> None:
    """Register ``plugin``; unregister it again if it implements an unknown hook."""
    pm.register(plugin, name=name)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        pm.unregister(plugin)
        raise exc


def _load_builtins(pm: pluggy.PluginManager) -> None:
    for module_name in DEFAULT_PLUGINS:
        try:
            module = importlib.import_module(module_name)
            _register_checked(pm, module, module_name, builtin=True)
            _builtin_names.add(module_name)
        except Exception as exc:
            if strict_mode():
                raise
            _report(module_name, exc, builtin=True)


def selected_entry_points() -> list[importlib.metadata.EntryPoint]:
    """The ``transferkit`` entry points, limited by ``TRANSFERKIT_LOAD_PLUGINS`` when it is set."""
    eps = list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
    only = os.environ.get(LOAD_ENV)
    if only is not None:
        wanted = {n.strip() for n in only.split(",") if n.strip()}
        eps = [ep for ep in eps if ep.name in wanted]
    return eps


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    for ep in selected_entry_points():
        if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
            continue
        try:
            plugin = ep.load()
            _register_checked(pm, plugin, ep.name, builtin=False)
            if ep.dist is not None:
                _versions[ep.name] = ep.dist.version
        except Exception as exc:
            if strict_mode():
                raise
            _report(ep.name, exc, builtin=False)


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, with built-ins and entry points loaded on first use."""
    global _pm
    with _lock:
        if _pm is None:
            pm = pluggy.PluginManager(hookspecs.PROJECT)
            pm.add_hookspecs(hookspecs)
            _load_builtins(pm)
            _load_entry_points(pm)
            _pm = pm
        return _pm


def reset() -> None:
    """Forget every loaded plugin (used after installing packages, and by tests)."""
    global _pm
    with _lock:
        _pm = None
        _failed.clear()
        _builtin_names.clear()
        _versions.clear()
        from . import registry

        registry.clear_cache()


def failed_plugins() -> list[FailedPlugin]:
    get_plugin_manager()
    return list(_failed)


def is_builtin(name: str) -> bool:
    return name in _builtin_names


def plugin_version(name: str, plugin: Any) -> str:
    if name in _versions:
        return _versions[name]
    if name in _builtin_names:
        from . import __version__

        return __version__
    return str(getattr(plugin, "__version__", "") or "")


def list_plugins(include_builtin: bool = False) -> list[dict[str, Any]]:
    """Loaded plugins (name, version, hooks, builtin) followed by failed ones (with ``error``)."""
    pm = get_plugin_manager()
    rows: list[dict[str, Any]] = []
    for name, plugin in sorted(pm.list_name_plugin(), key=lambda item: item[0]):
        if plugin is None:
            continue
        builtin = is_builtin(name)
        if builtin and not include_builtin:
            continue
        hooks = sorted(h.name for h in (pm.get_hookcallers(plugin) or []))
        rows.append(
            {
                "name": name,
                "version": plugin_version(name, plugin),
                "hooks": hooks,
                "builtin": builtin,
                "status": "loaded",
            }
        )
    for failed in _failed:
        if failed.builtin and not include_builtin:
            continue
        rows.append(
            {
                "name": failed.name,
                "version": "",
                "hooks": [],
                "builtin": failed.builtin,
                "status": "failed",
                "error": failed.error,
            }
        )
    return rows


def call_lifecycle(hook_name: str, **kwargs: Any) -> None:
    """Call a lifecycle hook; a plugin's error is reported, not allowed to stop the job."""
    hook = getattr(get_plugin_manager().hook, hook_name)
    try:
        hook(**kwargs)
    except Exception as exc:
        if strict_mode():
            raise
        print(f"transferkit: plugin hook {hook_name} failed: {exc}", file=sys.stderr)


def notify_exception(exception: BaseException, where: str, **context: Any) -> None:
    """The one place a failing job reports to ``on_exception`` hooks before re-raising."""
    try:
        get_plugin_manager().hook.on_exception(exception=exception, where=where, context=context)
    except Exception as exc:  # a failing handler must not hide the original error
        print(f"transferkit: on_exception hook failed: {exc}", file=sys.stderr)
