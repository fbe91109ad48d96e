"""Shared fixtures. Entry-point plugins never autoload in tests: whatever is installed on a machine
cannot leak into a test. Tests register plugin objects through ``register_plugin``. A command line
run in this process (click's ``CliRunner``) leaves no handler, level or ``-v`` behind for the
next test."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from cli_faults import command_line_state

# A test run started in the background of a non-interactive shell inherits SIGINT ignored, and
# so would every command a test starts (Python installs no KeyboardInterrupt handler then): the
# tests of Ctrl-C need the default disposition, as a terminal gives it.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

# Each xdist worker gets its share of the cores for its libraries' thread pools (TensorFlow's
# intra- and inter-op pools, OpenMP, OpenBLAS), as a spot-check worker does: the workers' pools
# would otherwise contend for every core. A run in one process (`-n 0`) keeps the defaults.
if os.environ.get("PYTEST_XDIST_WORKER"):
    _workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    _threads = str(max(1, (os.cpu_count() or 1) // _workers))
    for _var in (
        "TF_NUM_INTRAOP_THREADS",
        "TF_NUM_INTEROP_THREADS",
        "OMP_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
    ):
        os.environ.setdefault(_var, _threads)


# The two xdist workers take whole files in the order collected (`--dist loadfile`, with
# `--no-loadscope-reorder` in pyproject.toml): the files that take longest go first, so that the
# workers end together rather than one finishing a long file alone. Seconds of each file's
# slowest tests on 2 cores (`pytest --durations=60`); the other files follow, most tests first.
HEAVY_FILES = {
    "test_kerashub.py": 315,
    "test_distribute.py": 196,
    "test_frozen_cache.py": 166,
    "test_runtimes.py": 128,
    "test_trainer_resume.py": 88,
    "test_demo.py": 83,
    "test_spotcheck.py": 68,
    "test_finetune_quality.py": 68,
    "test_trust.py": 67,
    "test_faults.py": 65,
    "test_plugin_template.py": 62,
    "test_cli_quiet.py": 60,
    "test_allocator.py": 60,
    "test_trainer_finetune.py": 46,
    "test_extract_dask.py": 39,
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    count: dict[str, int] = {}
    for item in items:
        count[item.path.name] = count.get(item.path.name, 0) + 1
    items.sort(key=lambda item: (-HEAVY_FILES.get(item.path.name, 0), -count[item.path.name],
                                 item.path.name))  # fmt: skip


@pytest.fixture(autouse=True)
def _isolated_plugins(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    from transferkit import plugin_manager

    monkeypatch.setenv("TRANSFERKIT_LOAD_PLUGINS", "")
    monkeypatch.delenv("TRANSFERKIT_STRICT_PLUGINS", raising=False)
    plugin_manager.reset()
    yield
    plugin_manager.reset()


@pytest.fixture(autouse=True)
def _isolated_command_line(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("TRANSFERKIT_VERBOSE", raising=False)
    with command_line_state():
        yield


@pytest.fixture
def register_plugin() -> Iterator[Callable[[Any, str], Any]]:
    """Register a plugin object (module, class instance) for one test; unregistered after it."""
    from transferkit import plugin_manager, registry

    pm = plugin_manager.get_plugin_manager()
    added: list[Any] = []

    def register(plugin: Any, name: str) -> Any:
        pm.register(plugin, name=name)
        pm.check_pending()
        added.append(plugin)
        registry.clear_cache()
        return plugin

    try:
        yield register
    finally:
        for plugin in added:
            if pm.is_registered(plugin):
                pm.unregister(plugin)
        registry.clear_cache()


@pytest.fixture
def tiny(register_plugin: Callable[[Any, str], Any]) -> str:
    """The name of ``tests/tiny_backbone.py``'s backbone, registered as a plugin for one test."""
    import tiny_backbone

    register_plugin(tiny_backbone, "tiny-backbone")
    return str(tiny_backbone.NAME)
