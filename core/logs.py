"""How the command line shows the library's log records: the one handler on ``transferkit``.

Library modules log (``log = logging.getLogger(__name__)``) and never print; a program calling
``transferkit.extract(...)`` configures or silences the ``transferkit`` logger with the standard
``logging`` API. The command line installs :class:`CommandLineHandler`, which writes to whatever
``sys.stderr`` is when a record arrives (so click's test runner captures it too):

* ``INFO`` and ``DEBUG`` records as they are: progress and report lines;
* ``WARNING`` and above with the ``transferkit: `` prefix: what a user must not miss (a
  warning's own text starts with ``warning:``).

``-v`` lowers the level to ``DEBUG``. Without the command line, Python's last-resort handler
shows a caller the ``WARNING`` records and nothing else, as for any library.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

LOGGER = "transferkit"


class CommandLineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return f"transferkit: {text}" if record.levelno >= logging.WARNING else text


class CommandLineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler on the current ``sys.stderr`` (looked up at each record)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(CommandLineFormatter("%(message)s"))

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:  # StreamHandler.__init__ assigns it
        pass


def install(verbose: bool = False) -> CommandLineHandler:
    """Give the ``transferkit`` logger the command line's handler (once; later calls only set
    the level) and stop its records from reaching the root logger twice."""
    logger = logging.getLogger(LOGGER)
    handler = next((h for h in logger.handlers if isinstance(h, CommandLineHandler)), None)
    if handler is None:
        handler = CommandLineHandler()
        logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False
    return handler
