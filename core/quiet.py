"""Keep TensorFlow's native start-up lines off the user's terminal.

``TF_CPP_MIN_LOG_LEVEL`` silences TensorFlow's own C++ logging, but not the lines absl writes
before its logging is initialised ("WARNING: All log messages before absl::InitializeLog() ...",
``cudart_stub.cc``'s "Could not find cuda drivers", ``cuda_platform.cc``'s "failed call to
cuInit"), which go straight to file descriptor 2 from C++. :func:`filter_native_stderr` puts a
pipe on descriptor 2 whose reader thread drops exactly those lines (absl's ``I0000 00:00:...
file.cc:31]`` format) and passes everything else through at once, partial lines (progress bars)
included. Child processes inherit the filtered descriptor.

The command line turns it on unless ``-v`` is given or the user set ``TF_CPP_MIN_LOG_LEVEL``
themselves.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import sys
import threading

# absl/glog's prefix: severity, MMDD, time, thread id, file:line]
NATIVE_LINE = re.compile(
    rb"^(?:[IWEF]\d{4} [\d:.]+\s+\d+ [\w.+-]+:\d+\] "
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called)"
)
_ABSL_WARNING = b"WARNING: All log messages before absl::InitializeLog() is called"
_PARTIAL_NATIVE = re.compile(rb"^[IWEF]\d{0,4}(?: [\d:. ]*(?:\d+ [\w.+-:]*)?)?$")


def _may_become_native(partial: bytes) -> bool:
    """Whether a line still without its end could turn out to be a native start-up line."""
    return bool(_PARTIAL_NATIVE.match(partial)) or _ABSL_WARNING.startswith(partial)


_installed = False


def _split(buffer: bytes) -> tuple[list[bytes], bytes]:
    """Complete lines (ending in ``\\n`` or ``\\r``) of ``buffer`` and the rest."""
    lines = []
    start = 0
    for i, byte in enumerate(buffer):
        if byte in (10, 13):
            lines.append(buffer[start : i + 1])
            start = i + 1
    return lines, buffer[start:]


def _pump(read_fd: int, out_fd: int) -> None:
    pending = b""
    while True:
        try:
            chunk = os.read(read_fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        lines, pending = _split(pending + chunk)
        shown = b"".join(line for line in lines if not NATIVE_LINE.match(line))
        if pending and not NATIVE_LINE.match(pending) and not _may_become_native(pending):
            shown, pending = shown + pending, b""  # a partial line that is not TensorFlow's
        if shown:
            os.write(out_fd, shown)
    if pending and not NATIVE_LINE.match(pending):
        os.write(out_fd, pending)


def filter_native_stderr() -> bool:
    """Filter TensorFlow's native start-up lines out of file descriptor 2 (once per process).
    Returns whether the filter is on."""
    global _installed
    if _installed:
        return True
    try:
        sys.stderr.flush()
        original = os.dup(2)
        read_fd, write_fd = os.pipe()
        os.dup2(write_fd, 2)
        os.close(write_fd)
    except OSError:
        return False
    thread = threading.Thread(
        target=_pump, args=(read_fd, original), name="transferkit-stderr", daemon=True
    )
    thread.start()
    _installed = True

    def restore() -> None:
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()
        os.dup2(original, 2)  # closes this process's end of the pipe
        thread.join(timeout=0.3)  # drain what is in the pipe; children still holding it (a
        # forkserver) must not delay the exit

    atexit.register(restore)
    return True
