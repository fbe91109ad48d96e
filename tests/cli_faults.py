"""Helpers for the fault suite: run the command line and check that a fault ends cleanly (the exit
code, one message, no traceback) and that the user's files are untouched.

Two ways to run it, with one result type (``subprocess.CompletedProcess``), so that a test's
assertions read the same either way:

* :func:`invoke_cli` runs it in this process with click's ``CliRunner``: a refusal is an exit
  code, a line on stderr and an unchanged file tree, all visible here, without paying
  TensorFlow's start-up again. Plugins are registered as objects (``register_plugin``).
* :func:`run_cli` starts ``python -m transferkit`` in a real process, for the tests whose subject
  is the process (``@pytest.mark.process``): signals, native stderr, import-time behaviour.
  Plugins come through real entry points (:func:`write_entry_points`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import stat
import subprocess
import sys
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path

from click.testing import CliRunner

QUIET_ENV = {
    "TF_CPP_MIN_LOG_LEVEL": "3",
    "TF_ENABLE_ONEDNN_OPTS": "0",
    "TRANSFERKIT_LOAD_PLUGINS": "",
}
TESTS = Path(__file__).resolve().parent
# what a test's plugin environment may name; invoke_cli loads the plugins again under them
PLUGIN_ENV = ("TRANSFERKIT_LOAD_PLUGINS", "TRANSFERKIT_STRICT_PLUGINS")


def run_cli(
    *args: str | os.PathLike[str],
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m transferkit ARGS`` and return the finished process (never raises on exit)."""
    full_env = {**os.environ, **QUIET_ENV, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "transferkit", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=full_env,
        timeout=timeout,
    )


def python_output(code: str, *, cwd: Path | None = None, timeout: float = 300) -> str:
    """What ``python -c CODE`` prints in a fresh process (it must succeed): for what only a new
    process shows, such as the modules an import brings in."""
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=cwd,
        timeout=timeout,
    ).stdout


@contextlib.contextmanager
def command_line_state() -> Iterator[None]:
    """Put back what running the command line in this process changes: the ``transferkit``
    logger's handler, level and propagation (``transferkit.logs.install``) and
    ``TRANSFERKIT_VERBOSE`` (set by ``-v``)."""
    from transferkit.cli import VERBOSE_ENV
    from transferkit.logs import LOGGER

    logger = logging.getLogger(LOGGER)
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    verbose = os.environ.get(VERBOSE_ENV)
    try:
        yield
    finally:
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate
        if verbose is None:
            os.environ.pop(VERBOSE_ENV, None)
        else:
            os.environ[VERBOSE_ENV] = verbose


@contextlib.contextmanager
def _python_warning_filters() -> Iterator[None]:
    """The warning filters of a plain ``python`` run, so that a warning reaches the captured
    stderr as it would a process's (pytest otherwise records it out of sight)."""
    with warnings.catch_warnings():
        warnings.resetwarnings()
        warnings.simplefilter("default")
        for category in (
            DeprecationWarning,
            PendingDeprecationWarning,
            ImportWarning,
            ResourceWarning,
        ):
            warnings.simplefilter("ignore", category)
        yield


def invoke_cli(
    *args: str | os.PathLike[str], env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``transferkit ARGS`` in this process (click's ``CliRunner``) and return its exit code,
    stdout and stderr as a finished process would. An exception the command line does not turn
    into a message is raised here, as the traceback a process would print.

    ``env`` is set for the run only. Naming ``TRANSFERKIT_LOAD_PLUGINS`` or
    ``TRANSFERKIT_STRICT_PLUGINS`` in it loads the plugins again under it (before and after);
    otherwise the plugins are those of the test (``register_plugin``)."""
    from transferkit import plugin_manager
    from transferkit.cli import VERBOSE_ENV, build_cli

    cli = build_cli()
    full_env: dict[str, str | None] = {VERBOSE_ENV: None, **(env or {})}
    reload_plugins = any(name in full_env for name in PLUGIN_ENV)
    argv = [os.fspath(a) for a in args]
    runner = CliRunner()
    with command_line_state(), _python_warning_filters():
        if reload_plugins:
            plugin_manager.reset()  # they load on first use, under full_env
        try:
            result = runner.invoke(
                cli, argv, env=full_env, catch_exceptions=False, prog_name="transferkit"
            )
        finally:
            if reload_plugins:
                plugin_manager.reset()
    return subprocess.CompletedProcess(
        ["transferkit", *argv], result.exit_code, result.stdout, result.stderr
    )


def write_entry_points(
    root: Path, entry_points: Mapping[str, str], name: str = "fault-plugins", version: str = "0.3"
) -> Path:
    """Make ``root`` a folder for ``PYTHONPATH`` holding a fake installed distribution: its
    ``.dist-info`` with ``METADATA`` and ``entry_points.txt`` declares one ``transferkit`` entry
    point per item (plugin name -> module), found by ``importlib.metadata`` exactly as a
    pip-installed plugin is."""
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = ["[transferkit]", *(f"{plugin} = {module}" for plugin, module in entry_points.items())]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    return root


def plugin_env(site: Path, names: str, **extra: str) -> dict[str, str]:
    """The environment of a process that loads the entry-point plugins ``names`` (comma
    separated) from ``site`` (:func:`write_entry_points`) and ``tests/``."""
    parts = [str(site), str(TESTS), os.environ.get("PYTHONPATH", "")]
    path = os.pathsep.join(filter(None, parts))
    return {"PYTHONPATH": path, "TRANSFERKIT_LOAD_PLUGINS": names, **extra}


def assert_fails_cleanly(
    result: subprocess.CompletedProcess[str], code: int, *needles: str
) -> None:
    """The command exited with ``code``, printed no traceback, and its stderr has every needle."""
    output = result.stdout + result.stderr
    assert result.returncode == code, (result.returncode, output)
    assert "Traceback" not in output, output
    for needle in needles:
        assert needle in result.stderr, (needle, result.stderr)


def assert_succeeds(result: subprocess.CompletedProcess[str]) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Traceback" not in output, output


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under ``root`` (relative path, symlinks not followed) with its SHA-256, and every
    directory; two digests are equal only if nothing was added, removed or changed."""
    digest: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            digest[os.path.relpath(os.path.join(dirpath, name), root)] = "<dir>"
        for name in filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            if os.path.islink(path):
                digest[rel] = "-> " + os.readlink(path)
            elif not stat.S_ISREG(os.lstat(path).st_mode):  # a FIFO or socket: never opened
                digest[rel] = f"<special {stat.S_IFMT(os.lstat(path).st_mode):o}>"
            else:
                with open(path, "rb") as fh:
                    digest[rel] = hashlib.sha256(fh.read()).hexdigest()
    return digest
