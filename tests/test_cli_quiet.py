"""A quieter, safer command line: no TensorFlow start-up lines on stderr unless asked, the
extraction summary's wall time and streaming rate, a resume with nothing left, ``backbones
PATTERN`` and its OFFLINE column, plugins' distribution names, ``uninstall`` failing when nothing
was uninstalled, and ``transferkit.spotcheck`` from a plain script without a ``__main__`` guard.
Through real processes (``@pytest.mark.process``) where the terminal's view is what is tested,
with the tiny backbone."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cli_faults import invoke_cli, plugin_env, write_entry_points
from click.testing import CliRunner
from PIL import Image

from transferkit import hookimpl
from transferkit.cli import build_cli
from transferkit.quiet import NATIVE_LINE, _pump

ROOT = Path(__file__).resolve().parents[1]
TRANSFERKIT = str(Path(sys.executable).with_name("transferkit"))
NATIVE_MARKERS = ("absl::InitializeLog", "cudart_stub", "cuInit", "oneDNN", "cpu_feature_guard")


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return {**env, "TRANSFERKIT_LOAD_PLUGINS": ""}


def test_the_filter_drops_native_lines_and_passes_the_rest_at_once() -> None:
    native = [
        b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
        b"I0000 00:00:1796162075.473386   19804 cudart_stub.cc:31] Could not find cuda drivers\n",
        b"E0000 00:00:1796162087.176346   19804 cuda_platform.cc:52] failed call to cuInit\n",
        b"I1201 21:40:00.123456 140 cpu_feature_guard.cc:210] This TensorFlow binary is ...\n",
    ]
    ours = [b"Wrote 6 feature vectors\n", b"Image 3 is broken\n", b"\r 50%|#####     | 3/6"]
    assert all(NATIVE_LINE.match(line) for line in native)
    assert not any(NATIVE_LINE.match(line) for line in ours)
    r_in, w_in = os.pipe()
    r_out, w_out = os.pipe()
    # interleaved, split at awkward places
    data = native[0] + ours[0] + native[1][:7]
    os.write(w_in, data)
    os.write(w_in, native[1][7:] + ours[1] + native[2] + native[3] + ours[2])
    os.close(w_in)
    _pump(r_in, w_out)
    os.close(w_out)
    with os.fdopen(r_out, "rb") as fh:
        assert fh.read() == b"".join(ours)


@pytest.fixture
def images(tmp_path: Path) -> Path:
    for c in ("a", "b"):
        (tmp_path / "images" / c).mkdir(parents=True)
        for i in range(3):
            pixels = np.full((20, 20, 3), 40 * i + (100 if c == "b" else 0), np.uint8)
            Image.fromarray(pixels).save(tmp_path / "images" / c / f"{i}.png")
    return tmp_path / "images"


@pytest.mark.process
@pytest.mark.slow
def test_extract_in_a_terminal_shows_no_tensorflow_start_up_lines(
    images: Path, tmp_path: Path
) -> None:
    out = tmp_path / "f.h5"
    site = write_entry_points(tmp_path / "site", {"tiny": "tiny_backbone"}, name="tiny-backbone")
    env = {**clean_env(), **plugin_env(site, "tiny")}
    command = [TRANSFERKIT, "extract", str(images), "-b", "tiny-cnn", "--input-size", "32",
               "-o", str(out), "--no-progress"]  # fmt: skip
    first = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert first.returncode == 0, first.stderr
    assert not [m for m in NATIVE_MARKERS if m in first.stderr], first.stderr
    assert "wall time" in first.stdout and "images/s streaming" in first.stdout
    # nothing left to do: said so, not "0.0 images/s"
    again = subprocess.run(
        [*command, "--resume"], capture_output=True, text=True, env=env, timeout=300
    )
    assert again.returncode == 0, again.stderr
    assert "Nothing left to extract: all 6 images were already done" in again.stdout
    assert not [m for m in NATIVE_MARKERS if m in again.stderr], again.stderr
    # what the filter hides is really there without it (when this machine's TensorFlow prints any)
    raw = subprocess.run(
        [sys.executable, "-c", "import tensorflow as tf; tf.constant(1.0) + 1"],
        capture_output=True, text=True, env=clean_env(), timeout=300,
    )  # fmt: skip
    shown = [m for m in NATIVE_MARKERS if m in raw.stderr]
    if shown:
        verbose = subprocess.run(
            [*command[:-1], "--overwrite", "-v"], capture_output=True, text=True, env=env,
            timeout=300,
        )  # fmt: skip
        assert verbose.returncode == 0, verbose.stderr
        assert any(m in verbose.stderr for m in shown), verbose.stderr


@pytest.mark.process
def test_spotcheck_from_a_plain_script_without_a_main_guard(tmp_path: Path) -> None:
    script = tmp_path / "plain.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import json, sys
            sys.path.insert(0, {str(ROOT / "tests")!r})
            from pathlib import Path
            from test_train import write_digits
            import transferkit

            store = write_digits(Path({str(tmp_path)!r}) / "d.h5", rows=300)
            report = transferkit.spotcheck(str(store), classifiers="ridge-1,knn-3", jobs=2,
                                           progress=False)
            print(json.dumps({{r["classifier"]: r["status"] for r in report["rows"]}}))
            """
        )
    )
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=clean_env(),
        timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"ridge-1": "ok", "knn-3": "ok"}


def test_backbones_filter_and_offline_column() -> None:
    runner = CliRunner()
    result = runner.invoke(build_cli(), ["backbones", "efficientnet*", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert rows and all(r["name"].startswith("efficientnet") for r in rows)
    offline = {r["name"]: r["offline"] for r in rows}
    assert offline["efficientnet-lite0"] == "yes"
    assert set(offline.values()) <= {"yes", "cached", "download"}
    table = runner.invoke(build_cli(), ["backbones", "lite"])
    assert "OFFLINE" in table.stdout and "efficientnet-lite0" in table.stdout
    assert "resnet50" not in table.stdout


@pytest.mark.process  # pip uninstall
def test_plugins_show_distributions_and_uninstall_fails_when_nothing_goes() -> None:
    runner = CliRunner()
    listed = runner.invoke(build_cli(), ["plugins", "--all", "--json"])
    assert listed.exit_code == 0
    rows = json.loads(listed.stdout)
    assert rows and all("distribution" in r for r in rows)
    assert {r["distribution"] for r in rows if r["builtin"]} == {"transferkit"}
    table = runner.invoke(build_cli(), ["plugins", "--all"])
    assert "DISTRIBUTION" in table.stdout
    gone = runner.invoke(build_cli(), ["uninstall", "transferkit-no-such-plugin-xyz"])
    assert gone.exit_code == 1
    assert "nothing was uninstalled" in gone.stderr
    assert "Skipping" not in gone.output  # pip's own lines only with -v


@pytest.mark.process  # pip install
def test_install_shows_pips_output_only_with_verbose(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("TRANSFERKIT_VERBOSE", raising=False)
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # a dry run of the local template: never the network
    args = [
        "install",
        "--dry-run",
        "--no-deps",
        "--no-build-isolation",
        str(ROOT / "plugin_template"),
    ]
    runner = CliRunner()
    quiet = runner.invoke(build_cli(), args)
    assert quiet.exit_code == 0, quiet.output
    assert "$ " in quiet.stderr
    assert "Would install" not in quiet.output + capfd.readouterr().out
    loud = runner.invoke(build_cli(), ["-v", *args])
    assert loud.exit_code == 0, loud.output
    monkeypatch.delenv("TRANSFERKIT_VERBOSE", raising=False)
    # pip's own lines went straight to the terminal
    assert "Would install transferkit-example-plugin" in capfd.readouterr().out
    # a failure shows pip's lines even without -v
    failing = runner.invoke(build_cli(), ["install", "--no-deps", str(ROOT / "no-such-plugin")])
    assert failing.exit_code == 1
    assert "pip install failed" in failing.stderr and "no-such-plugin" in failing.stderr


class NoisyPlugin:
    """Logs through the library's loggers while its classifiers are collected."""

    @hookimpl
    def register_classifiers(self, register: Any) -> None:
        log = logging.getLogger("transferkit.tests.noisy")
        log.warning("warning: a noisy plugin")
        log.debug("the details")


def test_a_command_run_in_this_process_shows_log_records_and_leaves_nothing_behind(
    register_plugin: Callable[[Any, str], Any],
) -> None:
    from transferkit import registry

    register_plugin(NoisyPlugin(), "noisy")
    logger = logging.getLogger("transferkit")
    before = (list(logger.handlers), logger.level, logger.propagate)
    quiet = invoke_cli("classifiers", "--json")
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == "transferkit: warning: a noisy plugin\n"
    registry.clear_cache()  # the plugin is asked again
    loud = invoke_cli("-v", "classifiers", "--json")
    assert loud.returncode == 0, loud.stderr
    assert "the details\n" in loud.stderr
    assert "TRANSFERKIT_VERBOSE" not in os.environ
    assert (list(logger.handlers), logger.level, logger.propagate) == before
