"""Lifecycle listeners are called one by one: a plugin that raises in a lifecycle hook or in
``on_exception`` is reported (a warning naming the plugin and the hook), and every other plugin
still hears the event."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest

from transferkit import hookimpl, plugin_manager

Register = Callable[[Any, str], Any]


class Raising:
    """A listener with a bug in each hook it implements."""

    @hookimpl
    def on_epoch_end(self, epoch: int) -> None:
        raise RuntimeError(f"listener bug at epoch {epoch}")

    @hookimpl
    def on_extract_start(self, backbone: str) -> None:
        raise ValueError("listener bug at the start")

    @hookimpl
    def on_exception(self, exception: BaseException) -> None:
        raise KeyError("listener bug in on_exception")


class Recording:
    """A listener that records what it hears."""

    def __init__(self) -> None:
        self.heard: list[tuple[Any, ...]] = []

    @hookimpl
    def on_epoch_end(self, epoch: int, logs: Any, phase: str) -> None:
        self.heard.append(("on_epoch_end", epoch, dict(logs), phase))

    @hookimpl
    def on_extract_start(self, backbone: str, total: int) -> None:
        self.heard.append(("on_extract_start", backbone, total))

    @hookimpl
    def on_exception(self, exception: BaseException, where: str, context: Any) -> None:
        self.heard.append(("on_exception", str(exception), where, dict(context)))


@pytest.fixture
def warnings_logged(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> Callable[[], list[str]]:
    """The warnings the ``transferkit`` loggers recorded (also when the command line's handler,
    which stops propagation, was installed by an earlier test in this process)."""
    monkeypatch.setattr(logging.getLogger("transferkit"), "propagate", True)
    caplog.set_level(logging.WARNING, logger="transferkit")

    def messages() -> list[str]:
        return [
            r.getMessage()
            for r in caplog.records
            if r.name.startswith("transferkit") and r.levelno == logging.WARNING
        ]

    return messages


def _two_listeners(register_plugin: Register, raising_first: bool) -> Recording:
    """Register a raising and a recording listener; pluggy calls the last registered first, so
    ``raising_first`` registers the raising one last."""
    recording = Recording()
    if raising_first:
        register_plugin(recording, "recording")
        register_plugin(Raising(), "raising")
    else:
        register_plugin(Raising(), "raising")
        register_plugin(recording, "recording")
    order = [impl.plugin_name for impl in plugin_manager.implementations("on_epoch_end")]
    assert order == (["raising", "recording"] if raising_first else ["recording", "raising"])
    return recording


@pytest.mark.parametrize("raising_first", [True, False], ids=["raising-first", "raising-last"])
def test_a_raising_lifecycle_listener_does_not_hide_the_event(
    register_plugin: Register, warnings_logged: Callable[[], list[str]], raising_first: bool
) -> None:
    recording = _two_listeners(register_plugin, raising_first)
    plugin_manager.call_lifecycle(
        "on_epoch_end", trainer=None, epoch=3, logs={"loss": 0.5}, phase="head"
    )
    plugin_manager.call_lifecycle(
        "on_extract_start", backbone="tiny", total=10, output="x.h5", config={}
    )
    assert recording.heard == [
        ("on_epoch_end", 3, {"loss": 0.5}, "head"),
        ("on_extract_start", "tiny", 10),
    ]
    assert warnings_logged() == [
        'plugin "raising" failed in on_epoch_end: RuntimeError: listener bug at epoch 3',
        'plugin "raising" failed in on_extract_start: ValueError: listener bug at the start',
    ]


@pytest.mark.parametrize("raising_first", [True, False], ids=["raising-first", "raising-last"])
def test_a_raising_exception_listener_does_not_hide_the_failure(
    register_plugin: Register, warnings_logged: Callable[[], list[str]], raising_first: bool
) -> None:
    recording = _two_listeners(register_plugin, raising_first)
    plugin_manager.notify_exception(ValueError("boom"), "extract", output="x.h5")
    assert recording.heard == [("on_exception", "boom", "extract", {"output": "x.h5"})]
    assert warnings_logged() == [
        "plugin \"raising\" failed in on_exception: KeyError: 'listener bug in on_exception'"
    ]


def test_strict_mode_stops_at_a_raising_lifecycle_listener_but_never_in_on_exception(
    register_plugin: Register, monkeypatch: pytest.MonkeyPatch
) -> None:
    recording = _two_listeners(register_plugin, raising_first=True)
    monkeypatch.setenv("TRANSFERKIT_STRICT_PLUGINS", "1")
    with pytest.raises(RuntimeError, match="listener bug at epoch 1"):
        plugin_manager.call_lifecycle("on_epoch_end", trainer=None, epoch=1, logs={}, phase="head")
    # a failing handler must not hide the job's own error, strict or not
    plugin_manager.notify_exception(ValueError("boom"), "fit")
    assert recording.heard == [("on_exception", "boom", "fit", {})]


def test_a_hook_wrapper_listener_is_reported_and_the_others_still_hear(
    register_plugin: Register, warnings_logged: Callable[[], list[str]]
) -> None:
    class Wrapper:
        @hookimpl(wrapper=True)
        def on_extract_start(self) -> Any:
            return (yield)

    recording = Recording()
    register_plugin(recording, "recording")
    register_plugin(Wrapper(), "wrapper")
    plugin_manager.call_lifecycle("on_extract_start", backbone="b", total=1, output="o", config={})
    assert recording.heard == [("on_extract_start", "b", 1)]
    [warning] = warnings_logged()
    assert warning.startswith('plugin "wrapper" failed in on_extract_start: TypeError: a hook')
