"""The public Python functions under the command line. Each imports its job module on use."""

from __future__ import annotations
