"""The ``transferkit`` logger as a test needs it, put back afterwards.

A command run in-process (``CliRunner``) installs the command line's handler on ``transferkit``
(``logs.install``) and stops its propagation; that stays for the rest of the process. A test
about log records starts from the logger a program gets on import, and leaves it as it was."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from transferkit import logs


@contextmanager
def fresh_logger() -> Iterator[logging.Logger]:
    """The ``transferkit`` logger with no handler, no level and propagation on, for a block."""
    logger = logging.getLogger(logs.LOGGER)
    handlers, level, propagate = logger.handlers[:], logger.level, logger.propagate
    logger.handlers.clear()
    logger.setLevel(logging.NOTSET)
    logger.propagate = True
    try:
        yield logger
    finally:
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate


@contextmanager
def command_line_logger() -> Iterator[logging.Logger]:
    """The ``transferkit`` logger as the command line sets it up, for a block."""
    with fresh_logger() as logger:
        logs.install()
        yield logger


@contextmanager
def no_logging_configured() -> Iterator[list[logging.LogRecord]]:
    """The root logger without handlers, as in a program that never configured ``logging``
    (pytest's capturing handlers are put back afterwards): records of ``WARNING`` and above
    then reach stderr through ``logging.lastResort``. Yields the records it wrote."""
    root = logging.getLogger()
    handlers = root.handlers[:]
    last_resort = logging.lastResort
    assert last_resort is not None
    reached: list[logging.LogRecord] = []

    def note(record: logging.LogRecord) -> bool:
        reached.append(record)
        return True

    root.handlers.clear()
    last_resort.addFilter(note)
    try:
        yield reached
    finally:
        last_resort.removeFilter(note)
        root.handlers[:] = handlers
