"""The fault suite: plugins that raise anything or import slowly, Ctrl-C and SIGKILL in the middle
of every long job, bad images, and two writers on one output. Every case runs the real command
line in a subprocess and checks the exit code, that no traceback is printed, the message, and that
nothing was lost or duplicated. docs/reliability.md lists each case with what transferkit does."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from cli_faults import assert_fails_cleanly, assert_succeeds, run_cli

# ---------------------------------------------------------------------------- plugins

PLUGINS = {
    "exits": "raise SystemExit(0)\n",
    "exits-code": "import sys\nsys.exit(3)\n",
    "raises-ki": "raise KeyboardInterrupt\n",
    "base": "class Odd(BaseException):\n    pass\nraise Odd('not an Exception')\n",
    "ctrl-c": (
        "import os, signal, time\n"
        "os.kill(os.getpid(), signal.SIGINT)  # what the terminal does on Ctrl-C\n"
        "time.sleep(30)\n"
    ),
    "slow": "import time\ntime.sleep(1.5)\n",
    "good": (
        "from transferkit import ClassifierSpec, hookimpl\n"
        "def centroid(**params):\n"
        "    from sklearn.neighbors import NearestCentroid\n"
        "    return NearestCentroid(**params)\n"
        "@hookimpl\n"
        "def register_classifiers(register):\n"
        "    register(ClassifierSpec(name='plugin-centroid', description='from a plugin',\n"
        "                            factory=centroid))\n"
    ),
}


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder for PYTHONPATH holding a fake installed distribution: its ``.dist-info`` with
    ``METADATA`` and ``entry_points.txt`` declares one ``transferkit`` entry point per module,
    found by ``importlib.metadata`` exactly as a pip-installed plugin is."""
    root = tmp_path_factory.mktemp("site")
    info = root / "fault_plugins-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fault-plugins\nVersion: 0.3\n")
    lines = ["[transferkit]"]
    for name, code in PLUGINS.items():
        module = "fault_plugin_" + name.replace("-", "_")
        (root / f"{module}.py").write_text(code)
        lines.append(f"{name} = {module}")
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    return root


def with_plugins(plugin_path: Path, names: str, **extra: str) -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(plugin_path), os.environ.get("PYTHONPATH", "")]))
    return {"PYTHONPATH": path, "TRANSFERKIT_LOAD_PLUGINS": names, **extra}


RAISERS = {
    "exits": "SystemExit: 0",
    "exits-code": "SystemExit: 3",
    "raises-ki": "KeyboardInterrupt",
    "base": "Odd: not an Exception",
}


def test_a_plugin_raising_any_base_exception_is_isolated(plugin_path: Path) -> None:
    env = with_plugins(plugin_path, ",".join([*RAISERS, "good"]))
    listed = run_cli("plugins", "--json", env=env)
    assert_succeeds(listed)
    rows = {r["name"]: r for r in json.loads(listed.stdout)}
    for name, error in RAISERS.items():
        assert f'error loading plugin "{name}": {error}' in listed.stderr
        assert rows[name]["status"] == "failed" and error in rows[name]["error"]
    assert rows["good"]["status"] == "loaded" and rows["good"]["version"] == "0.3"
    # the command still does its work: the healthy plugin's classifier is there
    classifiers = run_cli("classifiers", "--json", env=env)
    assert_succeeds(classifiers)
    assert "plugin-centroid" in {c["name"] for c in json.loads(classifiers.stdout)}


def test_strict_mode_stops_on_a_system_exit_with_a_message(plugin_path: Path) -> None:
    env = with_plugins(plugin_path, "exits", TRANSFERKIT_STRICT_PLUGINS="1")
    result = run_cli("plugins", env=env)
    assert result.returncode != 0  # not the plugin's exit code 0: that would hide the failure
    assert "PluginLoadError" in result.stderr and '"exits" raised SystemExit' in result.stderr


def test_ctrl_c_while_plugins_load_stops_the_program(plugin_path: Path) -> None:
    start = time.monotonic()
    result = run_cli("plugins", env=with_plugins(plugin_path, "ctrl-c,good"))
    assert time.monotonic() - start < 25  # did not sit out the plugin's sleep
    assert_fails_cleanly(result, 130, "interrupted while loading plugins")
    assert result.stdout == ""


def test_a_slow_plugin_is_named_with_the_way_round(plugin_path: Path) -> None:
    env = with_plugins(plugin_path, "slow,good", TRANSFERKIT_PLUGIN_SLOW_SECONDS="0.3")
    result = run_cli("plugins", "--json", env=env)
    assert_succeeds(result)
    assert 'plugin "slow" is still importing after 0.3s' in result.stderr
    assert "TRANSFERKIT_LOAD_PLUGINS" in result.stderr
    assert 'plugin "slow" took' in result.stderr
    assert "good" not in result.stderr  # the fast one is not named
    # a timer, not a time-out: the slow plugin still loads
    assert {r["name"]: r["status"] for r in json.loads(result.stdout)} == {
        "slow": "loaded",
        "good": "loaded",
    }
    quiet = run_cli("plugins", env=with_plugins(plugin_path, "slow"))  # default threshold: 5 s
    assert_succeeds(quiet)
    assert "slow" not in quiet.stderr
