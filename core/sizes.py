"""The one parser of input sizes (``--input-size``, ``NAME@SIZE``, config files, Python calls).

An input size is ``N`` (a square image) or ``HxW`` (height x width), as an ``int``, a string, or
a pair of ints. Each side must lie in ``[MIN_INPUT_SIDE, MAX_INPUT_SIDE]``; a backbone may ask for
a larger minimum (``minimum=``). Anything else -- ``"96x"``, ``"x96"``, ``"96x96x3"``, ``"9 6"``,
``1.5``, ``True``, a negative or zero side -- is a :class:`~transferkit.errors.UsageError`, never a
guess. The maximum bounds memory before anything is allocated: one float32 image of
``MAX_INPUT_SIDE`` squared is 48 MiB, so a batch of 32 holds 1.5 GiB of input alone, before the
network's activations (which are many times larger). No TensorFlow, no NumPy.
"""

from __future__ import annotations

import re
from typing import Any

from .errors import UsageError

MIN_INPUT_SIDE = 8
MAX_INPUT_SIDE = 2048

_SIZE_TEXT = re.compile(r"\s*(\d+)\s*(?:[x,]\s*(\d+)\s*)?", re.IGNORECASE | re.ASCII)


def _is_int(value: Any) -> bool:
    """An integer that is not a bool (NumPy integers included, without importing NumPy)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return type(value).__module__ == "numpy" and hasattr(value, "__index__")


def _malformed(value: Any) -> UsageError:
    return UsageError(
        f"input size {value!r} is not understood: give N or HEIGHTxWIDTH in whole "
        f"pixels, e.g. 224 or 224x160"
    )


def parse_input_size(
    value: Any, *, minimum: int = MIN_INPUT_SIDE, maximum: int = MAX_INPUT_SIDE
) -> tuple[int, int] | None:
    """``None``/``""`` -> None (the backbone's own size); ``224``, ``"224"``, ``"224x160"``,
    ``"224,160"`` or ``(224, 160)`` -> ``(height, width)``.

    Raises :class:`UsageError` for a malformed value or a side outside ``[minimum, maximum]``.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if _is_int(value):
        size = (int(value), int(value))
    elif isinstance(value, str):
        match = _SIZE_TEXT.fullmatch(value)
        if match is None or len(value) > 64:
            raise _malformed(value)
        height = int(match.group(1))
        size = (height, int(match.group(2)) if match.group(2) is not None else height)
    elif isinstance(value, list | tuple):
        if len(value) != 2 or not all(_is_int(v) for v in value):
            raise _malformed(value)
        size = (int(value[0]), int(value[1]))
    else:
        raise _malformed(value)
    low, high = max(1, int(minimum)), int(maximum)
    if min(size) < low:
        raise UsageError(
            f"input size {size[0]}x{size[1]} is too small: each side needs at least {low} pixels"
        )
    if max(size) > high:
        raise UsageError(
            f"input size {size[0]}x{size[1]} is too large: each side may have at most {high} "
            f"pixels (larger images would not fit a batch in memory)"
        )
    return size


def machine_memory() -> int | None:
    """This machine's physical memory in bytes, or None where the system does not say."""
    import os

    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def check_batch_fits(
    size: tuple[int, int] | None, batch_size: int, *, memory: int | None = None
) -> None:
    """Refuse a batch whose input alone (float32 RGB) would take more than a quarter of the
    machine's memory: the network's activations are many times larger, so such a run could
    only end in an out-of-memory kill, after minutes of work."""
    if size is None or batch_size <= 0:
        return
    total = machine_memory() if memory is None else memory
    need = int(size[0]) * int(size[1]) * 3 * 4 * int(batch_size)
    if total and need > total // 4:
        gib = 1 << 30
        raise UsageError(
            f"a batch of {batch_size} images of {size[0]}x{size[1]} needs {need / gib:.1f} GiB "
            f"for its input alone, more than a quarter of this machine's {total / gib:.1f} GiB; "
            f"use a smaller --batch-size or --input-size"
        )
