"""Helpers for the fault suite: run the real command line in a subprocess and check that a fault
ends cleanly (the exit code, one message, no traceback) and that the user's files are untouched."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path

QUIET_ENV = {
    "TF_CPP_MIN_LOG_LEVEL": "3",
    "TF_ENABLE_ONEDNN_OPTS": "0",
    "TRANSFERKIT_LOAD_PLUGINS": "",
}


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
