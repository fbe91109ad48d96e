"""TensorFlow's CPU allocator: the BFC allocator, chosen before TensorFlow starts.

TensorFlow's default CPU allocator hands every tensor to the C library's ``malloc``. glibc serves
large blocks (a batch of activations at 224 px is tens of megabytes) with ``mmap`` and returns
them with ``munmap`` when they are freed, so each training or extraction step faults the same
memory in again: millions of minor page faults, most of a fine-tune's system time. TensorFlow's
BFC allocator (``TF_CPU_ALLOCATOR_USE_BFC=true``) keeps the regions it took from the system and
reuses them; the cost is a higher peak resident size (see ``bench/RESULTS.md``).

:func:`choose_cpu_allocator` sets the variable in ``os.environ`` (so that child processes
inherit it: spot-check workers, a local Dask cluster, a forkserver) unless the user set it,
whatever its value: ``TF_CPU_ALLOCATOR_USE_BFC=false`` keeps TensorFlow's default. The package
calls it on import (``core/__init__.py``), the one place every path of transferkit passes before
it can import TensorFlow: the command line, the Python API, plugins and worker processes.

TensorFlow reads the variable once per process, when it creates its CPU device (at the first
operation, not at ``import tensorflow``). A program that imported TensorFlow and ran an
operation before importing transferkit keeps the allocator it started with; this module then
logs that once at debug level, and the setting still reaches the processes transferkit starts.
No TensorFlow import here.
"""

from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger(__name__)

ALLOCATOR_ENV = "TF_CPU_ALLOCATOR_USE_BFC"
ALLOCATOR_VALUE = "true"
# the BFC allocator's cap (TensorFlow's default: 64 GiB); left to the user
LIMIT_ENV = "TF_CPU_BFC_MEM_LIMIT_IN_MB"


def choose_cpu_allocator() -> str | None:
    """Set ``TF_CPU_ALLOCATOR_USE_BFC=true`` unless the environment has a value; return the
    value in effect for TensorFlows started from now on (the user's, when given)."""
    if ALLOCATOR_ENV in os.environ:
        return os.environ[ALLOCATOR_ENV]
    os.environ[ALLOCATOR_ENV] = ALLOCATOR_VALUE
    if "tensorflow" in sys.modules:
        log.debug(
            f"TensorFlow was imported before transferkit: {ALLOCATOR_ENV}={ALLOCATOR_VALUE} "
            "applies to this process only if TensorFlow has not run an operation yet (it "
            "reads the variable when it creates its CPU device); processes transferkit "
            f"starts inherit it. Set {ALLOCATOR_ENV} before starting Python to choose."
        )
    return ALLOCATOR_VALUE
