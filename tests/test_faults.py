"""The fault suite: plugins that raise anything or import slowly, Ctrl-C and SIGKILL in the middle
of every long job, bad images, and two writers on one output. Every case runs the real command
line in a subprocess and checks the exit code, that no traceback is printed, the message, and that
nothing was lost or duplicated. docs/reliability.md lists each case with what transferkit does."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_faults import QUIET_ENV, assert_fails_cleanly, assert_succeeds, run_cli

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
    "sleepy": (
        "import os, time\n"
        "from transferkit import ClassifierSpec, hookimpl\n"
        "def sleepy(name):\n"
        "    def factory(**params):\n"
        "        from sklearn.neighbors import NearestCentroid\n"
        "        class Sleepy(NearestCentroid):\n"
        "            def fit(self, X, y):\n"
        "                with open(os.environ['FAULTS_FIT_LOG'], 'a') as fh:\n"
        "                    fh.write(name + '\\n')\n"
        "                time.sleep(0.3)\n"
        "                return super().fit(X, y)\n"
        "        return Sleepy()\n"
        "    return factory\n"
        "@hookimpl\n"
        "def register_classifiers(register):\n"
        "    for i in range(8):\n"
        "        name = f'sleepy-{i}'\n"
        "        register(ClassifierSpec(name=name, description='slow', factory=sleepy(name)))\n"
    ),
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


# ---------------------------------------------------------------------------- spot-check


def _wait_for_lines(path: Path, count: int, proc: subprocess.Popen[str], limit: float) -> int:
    """Wait until the file at ``path`` has ``count`` lines; return how many it has."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before it could be interrupted"
        if path.exists() and len(path.read_text().splitlines()) >= count:
            return len(path.read_text().splitlines())
        time.sleep(0.05)
    raise AssertionError(f"{path} never reached {count} lines")


def _journal_pairs(path: Path) -> list[str]:
    pairs = []
    for line in path.read_text().splitlines()[1:]:
        with contextlib.suppress(ValueError):
            pairs.append(json.loads(line)["row"]["classifier"])
    return pairs


def _interrupt(
    args: list[str], env: dict[str, str], journal: Path, rows: int, sig: int
) -> subprocess.CompletedProcess[str]:
    """Run the command in a session of its own and signal the whole session (what the terminal
    does on Ctrl-C) once the journal holds ``rows`` rows; returns the finished process."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "transferkit", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **QUIET_ENV, **env},
        start_new_session=True,
    )
    try:
        _wait_for_lines(journal, rows + 1, proc, limit=120)  # the key, then the rows
        os.killpg(proc.pid, sig)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def test_ctrl_c_and_sigkill_during_spotcheck_keep_every_finished_row(
    plugin_path: Path, tmp_path: Path
) -> None:
    from test_train import write_digits

    store = write_digits(tmp_path / "digits.h5", rows=300)
    before = store.read_bytes()
    out = tmp_path / "report"
    journal = out / "spotcheck-journal.jsonl"
    pairs = [f"sleepy-{i}" for i in range(8)]
    args = ["spotcheck", str(store), "-c", ",".join(pairs), "-j", "1", "--out", str(out)]
    logs = [tmp_path / f"fits-{i}.log" for i in range(3)]

    def env(run: int) -> dict[str, str]:
        return {**with_plugins(plugin_path, "sleepy"), "FAULTS_FIT_LOG": str(logs[run])}

    # Ctrl-C: the finished rows are the report, marked incomplete
    first = _interrupt(args, env(0), journal, 2, signal.SIGINT)
    assert first.returncode == 130, first.stderr
    assert "Traceback" not in first.stdout + first.stderr, first.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["complete"] is False
    done = [r["classifier"] for r in report["rows"]]
    assert 2 <= len(done) < 8 and done == _journal_pairs(journal)
    assert report["pairs_left"] == 8 - len(done)
    assert f"{len(done)} of 8 pairs finished, {8 - len(done)} left" in first.stderr
    assert all(r["status"] == "ok" for r in report["rows"])

    # SIGKILL of the rerun: nothing is cleaned up, the journal still holds every finished row
    second = _interrupt(args, env(1), journal, len(done) + 1, signal.SIGKILL)
    assert second.returncode == -signal.SIGKILL
    assert f"{len(done)} done in an earlier run" in second.stderr
    assert not set(logs[1].read_text().split()) & set(done)  # the kept pairs were not refitted
    kept = _journal_pairs(journal)
    assert kept[: len(done)] == done and len(set(kept)) == len(kept) > len(done)

    third = run_cli(*args, env=env(2))
    assert_succeeds(third)
    assert f"{len(kept)} done in an earlier run" in third.stderr
    assert sorted(logs[2].read_text().split()) == sorted(set(pairs) - set(kept))
    final = json.loads((out / "report.json").read_text())
    assert final["complete"] is True and final["pairs_left"] == 0
    assert [r["classifier"] for r in final["rows"]] == pairs  # none lost, none twice
    assert all(r["status"] == "ok" and r["accuracy"] > 0.5 for r in final["rows"])
    assert not journal.exists()
    assert store.read_bytes() == before
