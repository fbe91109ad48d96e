"""The plugin manager: built-in plugins, entry-point plugins, and their isolated loading.

Built-in plugins are module paths in :data:`DEFAULT_PLUGINS`, registered exactly like third-party
plugins, which come from the ``transferkit`` entry-point group. Loading is lazy (the first call to
:func:`get_plugin_manager`) and idempotent. A plugin that fails to import, or implements a hook that
does not exist, is reported (a warning log record, which the command line prints on stderr) and
recorded in :func:`failed_plugins`; it never stops the command line. That holds for anything a
plugin raises at import, ``SystemExit`` and other ``BaseException`` subclasses included, with one
exception: a real Ctrl-C. While plugins load (in the main thread) a SIGINT handler notes that the
signal arrived; a ``KeyboardInterrupt`` that follows a real SIGINT stops the program, one that a
plugin raises by itself is isolated like any other error.

A plugin whose import takes longer than ``TRANSFERKIT_PLUGIN_SLOW_SECONDS`` (default 5) is named
(a warning) while it is still importing, with ``TRANSFERKIT_LOAD_PLUGINS`` as the way round: a
message, not a time-out (an import cannot be stopped safely).

Hooks that notify plugins (:func:`call_lifecycle`, :func:`notify_exception`) call each plugin's
implementation on its own (:func:`implementations`, :func:`call_impl`), as the registry does for
the ``register_*`` hooks: pluggy's own call stops at the first implementation that raises, which
would hide the event from every plugin after it. What one plugin raises is reported as a warning
naming the plugin and the hook (:func:`isolated`); the others still hear the event.

Environment:

* ``TRANSFERKIT_STRICT_PLUGINS=1`` re-raises a plugin's error instead of reporting it (a
  ``BaseException`` that is not an ``Exception`` as a :class:`PluginLoadError`).
* ``TRANSFERKIT_LOAD_PLUGINS=a,b`` loads only those entry-point plugins (empty: none).
* ``TRANSFERKIT_PLUGIN_SLOW_SECONDS=N`` the import time after which a plugin is named as slow.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pluggy

from . import hookspecs
from .errors import TransferkitError

log = logging.getLogger(__name__)

DEFAULT_PLUGINS: tuple[str, ...] = (
    "transferkit.plugins.heads",
    "transferkit.plugins.sklearn_classifiers",
    "transferkit.plugins.river_classifiers",
    "transferkit.plugins.stores",
    "transferkit.plugins.datasets",
    "transferkit.plugins.keras_applications",
    "transferkit.plugins.efficientnet_lite",
    "transferkit.plugins.tfhub",
    "transferkit.plugins.kerashub",
    "transferkit.plugins.strategies",
    "transferkit.plugins.runtimes",
    "transferkit.plugins.loggers",
)

ENTRY_POINT_GROUP = "transferkit"
STRICT_ENV = "TRANSFERKIT_STRICT_PLUGINS"
LOAD_ENV = "TRANSFERKIT_LOAD_PLUGINS"
SLOW_ENV = "TRANSFERKIT_PLUGIN_SLOW_SECONDS"
DEFAULT_SLOW_SECONDS = 5.0


class PluginLoadError(TransferkitError):
    """In strict mode: a plugin raised a ``BaseException`` that is not an ``Exception`` (such as
    ``SystemExit``) at import; re-raising that itself would end the program silently."""


@dataclass(frozen=True)
class FailedPlugin:
    name: str
    error: str
    builtin: bool


_lock = threading.RLock()
_pm: pluggy.PluginManager | None = None
_generation = 0  # bumped by reset(): what the registry cached before is stale
_failed: list[FailedPlugin] = []
_builtin_names: set[str] = set()
_versions: dict[str, str] = {}


def strict_mode() -> bool:
    """Whether ``TRANSFERKIT_STRICT_PLUGINS`` asks for plugin errors to be re-raised."""
    return os.environ.get(STRICT_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _report(name: str, exc: BaseException, builtin: bool) -> None:
    text = str(exc)
    message = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    if not isinstance(exc, Exception):
        message += " (raised at import; the plugin is not loaded)"
    _failed.append(FailedPlugin(name, message, builtin))
    log.warning('error loading plugin "%s": %s', name, message)


def _register_checked(pm: pluggy.PluginManager, plugin: Any, name: str, builtin: bool) -> None:
    """Register ``plugin``; unregister it again if it implements an unknown hook."""
    pm.register(plugin, name=name)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        pm.unregister(plugin)
        raise exc


class _InterruptWatch:
    """Tells a real Ctrl-C from a ``KeyboardInterrupt`` that a plugin raises by itself.

    While active (main thread only), SIGINT goes through a handler that records the signal and
    then does what the previous handler did. ``genuine(exc)`` is true for a ``KeyboardInterrupt``
    that followed a recorded SIGINT, or for any when the signal could not be watched (another
    thread, or a handler installed outside Python).
    """

    def __init__(self) -> None:
        self.signalled = False
        self.watching = False
        self._previous: Any = None

    def _handler(self, signum: int, frame: Any) -> None:
        previous = self._previous
        if previous == signal.SIG_IGN:
            return  # ignored, as before
        self.signalled = True
        if callable(previous):
            previous(signum, frame)
        else:  # SIG_DFL would end the process at once; stop it with the usual exception
            signal.default_int_handler(signum, frame)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = signal.getsignal(signal.SIGINT)
        if previous is None:  # installed outside Python: leave it alone
            yield
            return
        self._previous = previous
        signal.signal(signal.SIGINT, self._handler)
        self.watching = True
        try:
            yield
        finally:
            self.watching = False
            # a plugin that installed its own handler keeps it
            if signal.getsignal(signal.SIGINT) == self._handler:
                signal.signal(signal.SIGINT, previous)

    def genuine(self, exc: BaseException) -> bool:
        return isinstance(exc, KeyboardInterrupt) and (self.signalled or not self.watching)


def slow_seconds() -> float:
    """Seconds of import after which a plugin is named on stderr (default 5)."""
    text = os.environ.get(SLOW_ENV, "").strip()
    try:
        return float(text) if text else DEFAULT_SLOW_SECONDS
    except ValueError:
        return DEFAULT_SLOW_SECONDS


def _warn_slow(name: str, seconds: float) -> None:
    log.warning(
        'plugin "%s" is still importing after %gs; to start without it, name the plugins to '
        "load in %s (e.g. %s= loads none)",
        name,
        seconds,
        LOAD_ENV,
        LOAD_ENV,
    )


def _load_one(
    name: str, builtin: bool, load: Callable[[], None], watch: _InterruptWatch, slow: float | None
) -> None:
    """Run ``load``; report and isolate whatever it raises, except a real Ctrl-C."""
    timer = None
    if slow is not None and slow >= 0:
        timer = threading.Timer(slow, _warn_slow, args=(name, slow))
        timer.daemon = True
        timer.start()
    started = time.monotonic()
    try:
        load()
    except BaseException as exc:
        if watch.genuine(exc):
            raise
        if strict_mode():
            if isinstance(exc, Exception):
                raise
            raise PluginLoadError(f'plugin "{name}" raised {type(exc).__name__} at import') from exc
        _report(name, exc, builtin=builtin)
    finally:
        if timer is not None:
            timer.cancel()
    took = time.monotonic() - started
    if slow is not None and took > slow:
        log.warning('plugin "%s" took %.1fs to import', name, took)


def _load_builtins(pm: pluggy.PluginManager, watch: _InterruptWatch) -> None:
    for module_name in DEFAULT_PLUGINS:

        def load(module_name: str = module_name) -> None:
            module = importlib.import_module(module_name)
            _register_checked(pm, module, module_name, builtin=True)
            _builtin_names.add(module_name)

        _load_one(module_name, True, load, watch, slow=None)


def selected_entry_points() -> list[importlib.metadata.EntryPoint]:
    """The ``transferkit`` entry points, limited by ``TRANSFERKIT_LOAD_PLUGINS`` when it is set."""
    eps = list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
    only = os.environ.get(LOAD_ENV)
    if only is not None:
        wanted = {n.strip() for n in only.split(",") if n.strip()}
        eps = [ep for ep in eps if ep.name in wanted]
    return eps


def _load_entry_points(pm: pluggy.PluginManager, watch: _InterruptWatch) -> None:
    slow = slow_seconds()
    for ep in selected_entry_points():
        if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
            continue

        def load(ep: importlib.metadata.EntryPoint = ep) -> None:
            plugin = ep.load()
            _register_checked(pm, plugin, ep.name, builtin=False)
            if ep.dist is not None:
                _versions[ep.name] = ep.dist.version

        _load_one(ep.name, False, load, watch, slow)


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, with built-ins and entry points loaded on first use."""
    global _pm
    with _lock:
        if _pm is None:
            pm = pluggy.PluginManager(hookspecs.PROJECT)
            pm.add_hookspecs(hookspecs)
            watch = _InterruptWatch()
            try:
                with watch.active():
                    _load_builtins(pm, watch)
                    _load_entry_points(pm, watch)
            except BaseException:  # a real Ctrl-C (or strict mode): the next call starts again
                _failed.clear()
                _builtin_names.clear()
                _versions.clear()
                raise
            _pm = pm
        return _pm


def reset() -> None:
    """Forget every loaded plugin (used after installing packages, and by tests)."""
    global _pm, _generation
    with _lock:
        _pm = None
        _failed.clear()
        _builtin_names.clear()
        _versions.clear()
        _generation += 1


def generation() -> int:
    """How many times the plugins were forgotten (:func:`reset`): a cache of what the plugins
    registered (``transferkit.registry``) is stale once this changes."""
    return _generation


def failed_plugins() -> list[FailedPlugin]:
    get_plugin_manager()
    return list(_failed)


def is_builtin(name: str) -> bool:
    return name in _builtin_names


def plugin_version(name: str, plugin: Any) -> str:
    if name in _versions:
        return _versions[name]
    if name in _builtin_names:
        from .version import __version__

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


def implementations(hook_name: str) -> list[pluggy.HookImpl]:
    """The implementations of the hook ``hook_name`` in the order pluggy calls them (``tryfirst``
    ones first, ``trylast`` ones last, otherwise the last registered first)."""
    return list(reversed(getattr(get_plugin_manager().hook, hook_name).get_hookimpls()))


def call_impl(impl: pluggy.HookImpl, kwargs: Mapping[str, Any]) -> Any:
    """Call one hook implementation with the keyword arguments it accepts, as pluggy does: each
    of ``impl.argnames`` (a missing one is a ``pluggy.HookCallError``), and those of
    ``impl.kwargnames`` that ``kwargs`` holds."""
    if impl.hookwrapper or impl.wrapper:
        raise TypeError(
            "a hook wrapper cannot run here: transferkit calls each implementation of this hook "
            "on its own; implement it as a plain hook"
        )
    try:
        args = [kwargs[name] for name in impl.argnames]
    except KeyError as exc:
        raise pluggy.HookCallError(f"hook call must provide argument {exc.args[0]!r}") from exc
    extra = {name: kwargs[name] for name in impl.kwargnames if name in kwargs}
    return impl.function(*args, **extra)


@contextlib.contextmanager
def isolated(
    plugin_name: str,
    where: str,
    *,
    strict: bool | None = None,
    passthrough: tuple[type[BaseException], ...] = (),
) -> Iterator[None]:
    """Report an ``Exception`` that a plugin raises inside the block as a warning naming the
    plugin and ``where`` (a hook's name), instead of letting it stop the caller.

    ``strict`` (default: :func:`strict_mode`) re-raises instead; ``passthrough`` are exception
    types that are the caller's to handle (the registry's duplicate names)."""
    try:
        yield
    except passthrough:
        raise
    except Exception as exc:
        if strict_mode() if strict is None else strict:
            raise
        log.warning('plugin "%s" failed in %s: %s: %s', plugin_name, where, type(exc).__name__, exc)


def call_lifecycle(hook_name: str, **kwargs: Any) -> None:
    """Call a lifecycle hook, each plugin's implementation on its own: a plugin's error is
    reported (re-raised with ``TRANSFERKIT_STRICT_PLUGINS=1``), and never keeps the event from the
    other plugins or stops the job."""
    for impl in implementations(hook_name):
        with isolated(impl.plugin_name, hook_name):
            call_impl(impl, kwargs)


def notify_exception(exception: BaseException, where: str, **context: Any) -> None:
    """The one place a failing job reports to ``on_exception`` hooks before re-raising; each
    plugin hears it, whatever another one raises. A failing handler is reported, never raised
    (not even in strict mode): it must not hide the original error."""
    kwargs = {"exception": exception, "where": where, "context": context}
    for impl in implementations("on_exception"):
        with isolated(impl.plugin_name, "on_exception", strict=False):
            call_impl(impl, kwargs)
