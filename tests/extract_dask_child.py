"""Run ``transferkit extract ARGS...`` through the real command line in its own process, with the
tiny backbone registered first, so that a test can SIGKILL the client of a cluster extraction.

Usage: python extract_dask_child.py ARGS...
"""

from __future__ import annotations

import sys

import tiny_backbone

from transferkit import cli, plugin_manager

if __name__ == "__main__":
    plugin_manager.get_plugin_manager().register(tiny_backbone, name="tiny-backbone")
    cli.main(sys.argv[1:])
